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
