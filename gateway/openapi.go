package gateway

import (
	"encoding/json"
	"fmt"
)

// openAPIDocument is the generated OpenAPI document (from proto/ and
// http.yaml) plus the hand-written routes the gateway adds itself (the
// user overview), so /api/openapi.json describes every route served.
func openAPIDocument() ([]byte, error) {
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
	// (httpSemantics). Say so.
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
	return json.MarshalIndent(doc, "", "  ")
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
