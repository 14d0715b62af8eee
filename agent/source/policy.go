package source

import (
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"

	"github.com/sockmesh/sockmesh/agent/model"
)

// decodePolicy reads an AuthorizationPolicy and lists the fields it has beyond the
// subset sockmesh enforces. Those do not make the file unreadable: the policy is kept,
// rejected by the model, and its services fail closed.
func decodePolicy(js []byte) (*model.AuthorizationPolicy, error) {
	p := &model.AuthorizationPolicy{}
	if err := json.Unmarshal(js, p); err != nil {
		return nil, err
	}
	var raw struct {
		Spec any `json:"spec"`
	}
	if err := json.Unmarshal(js, &raw); err != nil {
		return nil, err
	}
	p.Unsupported = unknownFields(raw.Spec, reflect.TypeFor[model.AuthorizationPolicySpec](), "spec")
	slices.Sort(p.Unsupported)
	defaultNamespace(&p.Namespace)
	return p, nil
}

// unknownFields walks decoded JSON beside the Go type it was decoded into and returns
// the paths of object keys the type has no field for.
func unknownFields(v any, t reflect.Type, path string) []string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	var out []string
	switch v := v.(type) {
	case map[string]any:
		if t.Kind() == reflect.Map {
			return nil // free-form, e.g. matchLabels
		}
		if t.Kind() != reflect.Struct {
			return nil // a type mismatch; json.Unmarshal has reported it
		}
		fields := map[string]reflect.Type{}
		for f := range t.Fields() {
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name != "" && name != "-" {
				fields[name] = f.Type
			}
		}
		for k, sub := range v {
			ft, ok := fields[k]
			if !ok {
				out = append(out, path+"."+k)
				continue
			}
			out = append(out, unknownFields(sub, ft, path+"."+k)...)
		}
	case []any:
		if t.Kind() != reflect.Slice {
			return nil
		}
		for i, sub := range v {
			out = append(out, unknownFields(sub, t.Elem(), fmt.Sprintf("%s[%d]", path, i))...)
		}
	}
	return out
}
