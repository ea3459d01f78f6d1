package gateway

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/getkin/kin-openapi/openapi2"
	"github.com/getkin/kin-openapi/openapi2conv"
)

// openAPIDocument is the REST API's OpenAPI 3.0 document: what
// protoc-gen-openapiv2 generates from proto/ and http.yaml (Swagger 2.0),
// plus the routes the gateway adds itself (the user overview), converted
// with kin-openapi's openapi2conv and then told what the generator cannot
// know — the bearer security scheme and which calls are public, every
// error each route can answer, the limits and formats the services
// enforce, what is required and what is read-only, and one path per
// resource (the generator writes PATCH on /api/v1/users/{user.id}, the
// same URLs as /api/v1/users/{id}).
func openAPIDocument() ([]byte, error) { return OpenAPI() }

// OpenAPI is the document the gateway serves at /api/openapi.json
// (`trellis openapi` prints it).
func OpenAPI() ([]byte, error) {
	swagger, err := swaggerDocument()
	if err != nil {
		return nil, err
	}
	var doc2 openapi2.T
	if err := json.Unmarshal(swagger, &doc2); err != nil {
		return nil, fmt.Errorf("openapi: %w", err)
	}
	doc3, err := openapi2conv.ToV3(&doc2)
	if err != nil {
		return nil, fmt.Errorf("openapi: to 3.0: %w", err)
	}
	b, err := json.Marshal(doc3)
	if err != nil {
		return nil, err
	}
	var doc obj
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, err
	}
	if err := refine(doc); err != nil {
		return nil, fmt.Errorf("openapi: %w", err)
	}
	return json.MarshalIndent(doc, "", "  ")
}

// swaggerDocument is the generated Swagger 2.0 document with the
// gateway's own routes and its real success statuses.
func swaggerDocument() ([]byte, error) {
	var doc map[string]any
	if err := readJSON("openapi/trellis.swagger.json", &doc); err != nil {
		return nil, err
	}
	var extra struct {
		Paths       map[string]any `json:"paths"`
		Definitions map[string]any `json:"definitions"`
	}
	if err := readJSON("overview.openapi.json", &extra); err != nil {
		return nil, err
	}
	for _, k := range []string{"paths", "definitions"} {
		if _, ok := doc[k].(map[string]any); !ok {
			return nil, fmt.Errorf("openapi: generated document has no %s", k)
		}
	}
	for p, v := range extra.Paths {
		doc["paths"].(map[string]any)[p] = v
	}
	for d, v := range extra.Definitions {
		doc["definitions"].(map[string]any)[d] = v
	}
	// The generator documents every success as 200; the gateway answers
	// creates with 201 and a Location header, deletes with 204 and no body
	// (httpSemantics).
	paths := doc["paths"].(map[string]any)
	for _, c := range []struct{ path, method, status, description string }{
		{"/api/v1/users", "post", "201", "The user was created; Location is its URL."},
		{"/api/v1/orders", "post", "201", "The order was created (or, for a repeated request_id, found); Location is its URL."},
		{"/api/v1/users/{id}", "delete", "204", "The user was deleted."},
	} {
		op, _ := paths[c.path].(map[string]any)[c.method].(map[string]any)
		responses, _ := op["responses"].(map[string]any)
		ok, found := responses["200"].(map[string]any)
		if !found {
			return nil, fmt.Errorf("openapi: %s %s has no 200 response to rewrite", c.method, c.path)
		}
		delete(responses, "200")
		ok["description"] = c.description
		if c.status == "201" {
			ok["headers"] = map[string]any{"Location": map[string]any{"type": "string", "description": "URL of the created resource."}}
		} else {
			delete(ok, "schema")
		}
		responses[c.status] = ok
	}
	return json.Marshal(doc)
}

type obj = map[string]any

// at walks a document: keys of objects, failing loudly when the shape is
// not the expected one (a generator change must not pass silently).
func at(doc obj, keys ...string) (obj, error) {
	cur := doc
	for i, k := range keys {
		next, ok := cur[k].(obj)
		if !ok {
			return nil, fmt.Errorf("no %s", strings.Join(keys[:i+1], " → "))
		}
		cur = next
	}
	return cur, nil
}

func ref(name string) obj { return obj{"$ref": "#/components/schemas/" + name} }

// errorResponses are the answers the edge and the services give for a
// client's or the server's trouble, each the google.rpc.Status shape.
var errorResponses = map[string]string{
	"400": "Invalid input: fieldViolations in details name each bad field (also a cancelled order cancelled again).",
	"401": "No, an invalid or an expired access token (WWW-Authenticate: Bearer), or a wrong email or password.",
	"403": "Signed in, without the role this needs.",
	"404": "No such object, or one that belongs to someone else.",
	"409": "Already exists (an email taken, a request id used for another order).",
	"412": "The etag sent (If-Match or etag) is no longer the object's: read it again.",
	"413": "The body is larger than 1 MiB.",
	"415": "The body is not application/json, or is sent with a Content-Encoding (bodies are not decompressed: Accept-Encoding: identity).",
	"408": "The deadline the request set (Grpc-Timeout, gRPC's encoding: 250m, 2S) ran out before an answer, or is shorter than half of what the operation usually takes; the code is DEADLINE_EXCEEDED. Send a longer one, or none.",
	"429": "A rate limit: Retry-After says when to come back.",
	"503": "A service this needs is unavailable or overloaded: retry later.",
}

// routeErrors lists the 4xx each operation can answer besides the ones
// every API route can (400, 401, 408, 429, 503; the overview, which keeps
// its own deadline, no 408).
var routeErrors = map[string][]string{
	"post /api/v1/users":                {"409", "413", "415"},
	"get /api/v1/users":                 {"403"},
	"get /api/v1/users/{id}":            {"404"},
	"patch /api/v1/users/{id}":          {"404", "409", "412", "413", "415"},
	"delete /api/v1/users/{id}":         {"404", "412"},
	"get /api/v1/users:batchGet":        {"404"},
	"get /api/v1/users/{id}:overview":   {"404"},
	"post /api/v1/orders":               {"404", "409", "413", "415"},
	"get /api/v1/orders":                {"404"},
	"get /api/v1/users/{userId}/orders": {"404"},
	"get /api/v1/orders/{id}":           {"404"},
	"post /api/v1/orders/{id}:cancel":   {"404", "412", "413", "415"},
	"post /api/v1/auth:signIn":          {"413", "415"},
	"post /api/v1/auth:refresh":         {"413", "415"},
	"post /api/v1/auth:signOut":         {"413", "415"},
}

// public are the operations an anonymous caller may call.
var public = map[string]bool{"post /api/v1/users": true, "post /api/v1/auth:signIn": true, "post /api/v1/auth:refresh": true, "post /api/v1/auth:signOut": true}

// refine makes the converted document say what the server does.
func refine(doc obj) error {
	doc["info"].(obj)["description"] = "REST facade of the Trellis user and order services. Sign in (POST /api/v1/auth:signIn) and send the access token as `Authorization: Bearer <token>`; a user reads and changes only their own user and orders. Every error has the JSON shape {code, message, details}; the HTTP status follows the gRPC code."
	doc["servers"] = []any{obj{"url": "/", "description": "The gateway that serves this document."}}
	components, err := at(doc, "components")
	if err != nil {
		return err
	}
	components["securitySchemes"] = obj{"bearer": obj{"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
		"description": "An access token from POST /api/v1/auth:signIn or :refresh (ES256; public keys at /.well-known/jwks.json)."}}
	doc["security"] = []any{obj{"bearer": []any{}}}
	responses := obj{}
	for code, text := range errorResponses {
		r := obj{"description": text, "content": obj{"application/json": obj{"schema": ref("rpcStatus")}}}
		switch code {
		case "401":
			r["headers"] = obj{"WWW-Authenticate": obj{"description": `Bearer realm="trellis" (error="invalid_token" when a token was sent).`, "schema": obj{"type": "string"}}}
		case "429":
			r["headers"] = obj{"Retry-After": obj{"description": "Seconds to wait.", "schema": obj{"type": "integer"}}}
		}
		responses["E"+code] = r
	}
	components["responses"] = responses
	schemas, err := at(doc, "components", "schemas")
	if err != nil {
		return err
	}
	delete(schemas, "v1DeleteUserResponse") // a delete answers 204, no body
	if err := refineSchemas(schemas); err != nil {
		return err
	}
	paths, err := at(doc, "paths")
	if err != nil {
		return err
	}
	// One path per resource: PATCH joins GET and DELETE on {id}.
	patchItem, err := at(paths, "/api/v1/users/{user.id}")
	if err != nil {
		return err
	}
	byID, err := at(paths, "/api/v1/users/{id}")
	if err != nil {
		return err
	}
	byID["patch"] = patchItem["patch"]
	delete(paths, "/api/v1/users/{user.id}")
	patch := byID["patch"].(obj)
	patch["parameters"] = []any{
		idParam("id", "The user's id."),
		obj{"name": "updateMask", "in": "query", "required": false, "schema": obj{"type": "string"},
			"description": `Comma-separated fields to change ("email", "name"); without it, the fields present in the body.`},
		obj{"name": "If-Match", "in": "header", "required": false, "schema": obj{"type": "string"},
			"description": "The etag (ETag header) the change is conditional on; a stale one is 412."},
	}
	patch["requestBody"] = obj{"required": true, "content": obj{"application/json": obj{"schema": ref("v1UserPatch")}}}
	for path, item := range paths {
		for method, v := range item.(obj) {
			op, ok := v.(obj)
			if !ok {
				continue
			}
			key := method + " " + path
			extra, known := routeErrors[key]
			if !known {
				return fmt.Errorf("%s: no error list for this route", key)
			}
			rs := op["responses"].(obj)
			common := []string{"400", "401", "429", "503"}
			if !strings.HasSuffix(path, ":overview") {
				common = append(common, "408")
			}
			for _, code := range append(common, extra...) {
				rs[code] = obj{"$ref": "#/components/responses/E" + code}
			}
			if rs["default"] != nil {
				rs["default"].(obj)["description"] = "A server fault (500): the body says only \"internal error\" and the request id."
			}
			if public[key] {
				op["security"] = []any{obj{}} // anonymous; a token sent is still checked
			}
			refineParams(op)
		}
	}
	// GET /api/v1/orders: userId is required by the server.
	listOrders, err := at(paths, "/api/v1/orders", "get")
	if err != nil {
		return err
	}
	for _, p := range listOrders["parameters"].([]any) {
		if p := p.(obj); p["name"] == "userId" {
			p["required"] = true
		}
	}
	return nil
}

func idParam(name, description string) obj {
	return obj{"name": name, "in": "path", "required": true, "description": description,
		"schema": obj{"type": "string", "format": "uuid"}}
}

// refineParams states formats and limits of the parameters the
// generator typed only as strings and integers.
func refineParams(op obj) {
	params, _ := op["parameters"].([]any)
	for _, p := range params {
		p := p.(obj)
		schema, _ := p["schema"].(obj)
		if schema == nil {
			continue
		}
		switch p["name"] {
		case "id", "userId":
			schema["format"] = "uuid"
		case "ids":
			p["required"] = true
			schema["minItems"], schema["maxItems"] = 1, 100
			if items, ok := schema["items"].(obj); ok {
				items["format"] = "uuid"
			}
		case "pageSize":
			schema["minimum"] = 0
			p["description"] = "Most items to return: 0 means 50; more than 1000 returns 1000. A page also stops at about 256 KiB."
		case "pageToken":
			p["description"] = "next_page_token of the previous page; empty for the first."
		case "etag":
			schema["maxLength"] = 64
		}
	}
}

// refineSchemas adds what the validators enforce and what only the server
// sets.
func refineSchemas(s obj) error {
	set := func(schema, prop string, kv ...any) error {
		props, err := at(s, schema, "properties", prop)
		if err != nil {
			return err
		}
		for i := 0; i+1 < len(kv); i += 2 {
			props[kv[i].(string)] = kv[i+1]
		}
		return nil
	}
	required := func(schema string, fields ...string) error {
		sc, err := at(s, schema)
		if err != nil {
			return err
		}
		if len(fields) == 0 {
			delete(sc, "required")
			return nil
		}
		list := make([]any, len(fields))
		for i, f := range fields {
			list[i] = f
		}
		sc["required"] = list
		return nil
	}
	email := []any{"format", "email", "maxLength", 254}
	name := []any{"minLength", 1, "maxLength", 200}
	steps := []error{
		set("v1CreateUserRequest", "email", email...),
		set("v1CreateUserRequest", "name", name...),
		set("v1CreateUserRequest", "password", "format", "password", "minLength", 8, "maxLength", 72),
		required("v1SignInRequest", "email", "password"),
		set("v1SignInRequest", "email", "maxLength", 254),
		set("v1SignInRequest", "password", "format", "password", "maxLength", 72),
		set("v1RefreshTokenRequest", "refreshToken", "maxLength", 128, "description", "Required, unless the request carries X-Session-Cookie: 1 and the session cookie (browsers)."),
		set("v1SignOutRequest", "refreshToken", "maxLength", 128),
		set("v1CreateOrderRequest", "userId", "format", "uuid"),
		set("v1CreateOrderRequest", "items", "minItems", 1, "maxItems", 100),
		set("v1CreateOrderRequest", "requestId", "minLength", 1, "maxLength", 100),
		set("v1OrderItem", "productId", "minLength", 1, "maxLength", 100),
		set("v1OrderItem", "quantity", "minimum", 1, "maximum", 1000),
		set("v1Money", "currencyCode", "pattern", "^[A-Z]{3}$"),
		set("v1Money", "amountMinor", "pattern", "^[0-9]{1,13}$"),
		required("v1User", "id", "email", "name", "createTime", "updateTime", "etag"),
	}
	for _, p := range []string{"id", "createTime", "updateTime", "etag", "roles"} {
		steps = append(steps, set("v1User", p, "readOnly", true))
	}
	steps = append(steps, set("v1User", "id", "format", "uuid"), set("v1User", "email", "format", "email"))
	for _, err := range steps {
		if err != nil {
			return err
		}
	}
	s["v1UserPatch"] = obj{"type": "object", "description": "The fields of a user a PATCH may change; all optional (updateMask, or the fields present, say which).",
		"properties": obj{
			"email": obj{"type": "string", "format": "email", "maxLength": 254},
			"name":  obj{"type": "string", "minLength": 1, "maxLength": 200},
			"etag":  obj{"type": "string", "maxLength": 64, "description": "Make the change conditional on this etag (as If-Match)."},
		}, "additionalProperties": false}
	return nil
}

func readJSON(name string, v any) error {
	b, err := assets.ReadFile(name)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("openapi: %s: %w", name, err)
	}
	return nil
}
