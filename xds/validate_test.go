package xds

import (
	"fmt"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// validateDeep runs Envoy's protoc-gen-validate rules on a resource and on every
// message packed in an Any inside it (filter configs, per-route configs), which the
// resource's own ValidateAll does not look into.
func validateDeep(m proto.Message) error {
	if v, ok := m.(interface{ ValidateAll() error }); ok {
		if err := v.ValidateAll(); err != nil {
			return err
		}
	} else {
		return fmt.Errorf("%T has no validation rules", m)
	}
	var err error
	walkAnys(m.ProtoReflect(), func(a *anypb.Any) {
		if err != nil {
			return
		}
		inner, uerr := a.UnmarshalNew()
		if uerr != nil {
			err = fmt.Errorf("%s: %v", a.TypeUrl, uerr)
			return
		}
		if verr := validateDeep(inner); verr != nil {
			err = fmt.Errorf("%s: %w", a.TypeUrl, verr)
		}
	})
	return err
}

func walkAnys(m protoreflect.Message, f func(*anypb.Any)) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		visit := func(v protoreflect.Value) {
			msg := v.Message()
			if a, ok := msg.Interface().(*anypb.Any); ok {
				f(a)
				return
			}
			walkAnys(msg, f)
		}
		switch {
		case fd.IsList() && fd.Message() != nil:
			for i := 0; i < v.List().Len(); i++ {
				visit(v.List().Get(i))
			}
		case fd.IsMap() && fd.MapValue().Message() != nil:
			v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool { visit(mv); return true })
		case !fd.IsList() && !fd.IsMap() && fd.Message() != nil:
			visit(v)
		}
		return true
	})
}
