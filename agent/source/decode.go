// Package source holds the agent's sources: they turn the outside world (a YAML file, the
// Kubernetes API) into model snapshots. A source decodes objects, remembers the last good
// version of each so that one bad update does not remove what is programmed, and hands
// complete snapshots to a callback; it never programs anything itself.
package source

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/sockmesh/sockmesh/agent/model"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"sigs.k8s.io/yaml"
)

// KindFile is the ObjectError.Kind of problems with a whole input file.
const KindFile = "File"

// Reasons of file-level errors (metric label values, never renamed).
const (
	// ReasonMalformedYAML: a document is not YAML at all.
	ReasonMalformedYAML = "malformed_yaml"
	// ReasonMalformedObject: a document is YAML but not a readable Kubernetes object.
	ReasonMalformedObject = "malformed_object"
	// ReasonUnreadable: the file cannot be read (missing, permissions, ...).
	ReasonUnreadable = "unreadable"
)

// Decoded is everything Decode read from one file.
type Decoded struct {
	Services []*corev1.Service
	Slices   []*discoveryv1.EndpointSlice
	Pods     []*corev1.Pod
	Policies []*model.AuthorizationPolicy
	// Rejected are objects whose identity (kind, namespace, name) could be read but not
	// the rest: a type error, an apiVersion or kind sockmesh does not read. Each fails
	// alone: the Store keeps the last good version of what it may have been meant as.
	Rejected []Rejected
	// Ignored counts objects of kinds the agent has no use for, by "apiVersion/kind".
	Ignored map[string]int
	// Errors are all about the whole file (Kind KindFile): a document that is not YAML,
	// or an object whose identity cannot be read. When there is any, every other field
	// is empty: a half-read file would delete the services it failed to list.
	Errors []model.ObjectError
	// Documents counts the documents with content. A file with none is no input at all
	// (an empty file says nothing, it does not say "delete everything").
	Documents int
}

// Rejected is one object that could not be used, with what is known of it.
type Rejected struct {
	// Kind is the model kind when it is one sockmesh reads (at some apiVersion), else
	// the kind as written.
	Kind            string
	Namespace, Name string
	// Ours says Kind is one of sockmesh's kinds; an unknown kind may be a typo of any.
	Ours bool
	// PolicyLike objects may have been meant as an AuthorizationPolicy: they fail closed.
	PolicyLike bool
	Err        model.ObjectError
}

// Input is what the model is built from, for callers that use no Store (tests, tools):
// rejected objects are left out.
func (d Decoded) Input() model.Input {
	return model.Input{Services: d.Services, EndpointSlices: d.Slices, Pods: d.Pods, Policies: d.Policies}
}

// Decode reads multi-document Kubernetes YAML: v1 Services, discovery.k8s.io/v1
// EndpointSlices, v1 Pods, security.istio.io AuthorizationPolicies, and v1 Lists of them.
// Well-known kinds sockmesh has no use for are skipped; unknown kinds and apiVersions are
// rejected objects (see DecodeAll). Objects without a namespace get "default", as kubectl
// would give them. A file-level error comes with no objects at all.
func Decode(data []byte) (services []*corev1.Service, slices []*discoveryv1.EndpointSlice, errs []model.ObjectError) {
	d := DecodeAll(data)
	return d.Services, d.Slices, d.Errors
}

// DecodeAll is Decode, also counting the objects of kinds it skipped.
func DecodeAll(data []byte) Decoded { return (&Decoder{}).Decode(data) }

// Decoder is DecodeAll with a memory: it keeps each document's decoded objects by the
// document's content, so re-reading a large file after a small edit decodes only the
// documents that changed. Decoded objects are shared between results and must not be
// modified. The zero value is ready to use; it is not safe for concurrent use.
type Decoder struct {
	docs map[[sha256.Size]byte]Decoded
}

// Decode decodes data like DecodeAll and remembers the documents of this call only.
func (c *Decoder) Decode(data []byte) Decoded {
	d := Decoded{Ignored: map[string]int{}}
	seen := map[[sha256.Size]byte]Decoded{}
	for _, doc := range splitDocuments(data) {
		d.Documents++
		key := sha256.Sum256(doc.body)
		part, ok := c.docs[key]
		if !ok {
			part = decodeDocument(doc)
		}
		if len(part.Errors) > 0 {
			// Errors name the document's position, which an edit elsewhere can shift.
			d.Errors = append(d.Errors, part.Errors...)
			continue
		}
		seen[key] = part
		d.Services = append(d.Services, part.Services...)
		d.Slices = append(d.Slices, part.Slices...)
		d.Pods = append(d.Pods, part.Pods...)
		d.Policies = append(d.Policies, part.Policies...)
		d.Rejected = append(d.Rejected, part.Rejected...)
		for k, n := range part.Ignored {
			d.Ignored[k] += n
		}
	}
	c.docs = seen
	if len(d.Errors) > 0 {
		d.Services, d.Slices, d.Pods, d.Policies, d.Rejected = nil, nil, nil, nil, nil
	}
	return d
}

// decodeDocument decodes one document on its own.
func decodeDocument(doc document) Decoded {
	d := Decoded{Ignored: map[string]int{}}
	where := fmt.Sprintf("document %d (line %d)", doc.number, doc.line)
	js, err := yaml.YAMLToJSONStrict(doc.body) // strict: a repeated key is a typo, not "last wins"
	if err != nil {
		d.Errors = append(d.Errors, fileError(ReasonMalformedYAML, where+": "+fileLines(oneLine(err.Error()), doc.line)))
		return d
	}
	if string(bytes.TrimSpace(js)) == "null" {
		return d // e.g. a document holding only "~"
	}
	if err := d.object(js, where); err != nil {
		d.Errors = append(d.Errors, fileError(ReasonMalformedObject, oneLine(err.Error())))
	}
	return d
}

// head is what every object must let us read: without its identity, a bad object cannot
// fail alone (we could not tell which object it replaces), so the file is refused.
type head struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
}

// object decodes one JSON object, recursing into List items. The error it returns is
// about the whole file; an object whose identity is known fails alone, in d.Rejected.
func (d *Decoded) object(js []byte, where string) error {
	var h head
	if err := json.Unmarshal(js, &h); err != nil {
		return fmt.Errorf("%s is not a Kubernetes object (a mapping with apiVersion, kind and metadata): %v", where, err)
	}
	// Without a kind we cannot tell a typo'd Service from something to skip; skipping it
	// could delete a live service, so the file is refused instead.
	if h.APIVersion == "" || h.Kind == "" {
		return fmt.Errorf("%s has no apiVersion or no kind", where)
	}
	if h.Kind == "List" && h.APIVersion == "v1" {
		var list struct {
			Items []json.RawMessage `json:"items"`
		}
		if err := json.Unmarshal(js, &list); err != nil {
			return fmt.Errorf("%s: List: %v", where, err)
		}
		for i, item := range list.Items {
			if err := d.object(item, fmt.Sprintf("%s items[%d]", where, i)); err != nil {
				return err
			}
		}
		return nil
	}
	class := classify(h.APIVersion, h.Kind)
	if class == classIgnored {
		d.Ignored[h.APIVersion+"/"+h.Kind]++
		return nil
	}
	if h.Metadata.Name == "" {
		return fmt.Errorf("%s: %s %s has no metadata.name, so it cannot be told from the object it may replace", where, h.APIVersion, h.Kind)
	}
	defaultNamespace(&h.Metadata.Namespace)
	reject := func(reason, msg string) {
		_, ours := supported[h.Kind]
		d.Rejected = append(d.Rejected, Rejected{
			Kind: h.Kind, Namespace: h.Metadata.Namespace, Name: h.Metadata.Name,
			Ours: ours, PolicyLike: policyLike(h.APIVersion, h.Kind),
			Err: model.ObjectError{Kind: h.Kind, Namespace: h.Metadata.Namespace, Name: h.Metadata.Name,
				Reason: reason, Message: oneLine(msg)},
		})
	}
	switch class {
	case classOtherVer:
		reject(ReasonUnsupportedAPIVersion, fmt.Sprintf("%s: apiVersion %q is not read for kind %s (want %s)",
			where, h.APIVersion, h.Kind, strings.Join(supported[h.Kind], " or ")))
		return nil
	case classUnknown:
		reject(ReasonUnknownKind, fmt.Sprintf("%s: kind %q at apiVersion %q is not one sockmesh knows (a typo?)",
			where, h.Kind, h.APIVersion))
		return nil
	}
	var err error
	switch h.Kind {
	case model.KindService:
		svc := &corev1.Service{}
		if err = json.Unmarshal(js, svc); err == nil {
			defaultNamespace(&svc.Namespace)
			d.Services = append(d.Services, svc)
		}
	case model.KindEndpointSlice:
		slice := &discoveryv1.EndpointSlice{}
		if err = json.Unmarshal(js, slice); err == nil {
			defaultNamespace(&slice.Namespace)
			d.Slices = append(d.Slices, slice)
		}
	case model.KindPod:
		pod := &corev1.Pod{}
		if err = json.Unmarshal(js, pod); err == nil {
			defaultNamespace(&pod.Namespace)
			d.Pods = append(d.Pods, pod)
		}
	case model.KindAuthorizationPolicy:
		var p *model.AuthorizationPolicy
		if p, err = decodePolicy(js); err == nil {
			d.Policies = append(d.Policies, p)
		}
	}
	if err != nil {
		reject(ReasonMalformedObject, fmt.Sprintf("%s: %v", where, err))
	}
	return nil
}

func defaultNamespace(ns *string) {
	if *ns == "" {
		*ns = "default"
	}
}

// document is one YAML document of a file. number counts only documents with content, so
// that a leading "---" does not shift the numbers users see in errors; line is where the
// document starts, for editors.
type document struct {
	number, line int
	body         []byte
}

// splitDocuments splits on lines that are exactly "---" (trailing blanks and a CR
// allowed, for files written on Windows) and drops documents holding only blank lines
// and comments.
func splitDocuments(data []byte) []document {
	var docs []document
	cur := document{line: 1}
	flush := func() {
		if hasContent(cur.body) {
			cur.number = len(docs) + 1
			docs = append(docs, cur)
		}
	}
	lines := bytes.SplitAfter(data, []byte("\n"))
	for i, l := range lines {
		if string(bytes.TrimRight(l, " \t\r\n")) == "---" {
			flush()
			cur = document{line: i + 2}
			continue
		}
		cur.body = append(cur.body, l...)
	}
	flush()
	return docs
}

func hasContent(body []byte) bool {
	for l := range bytes.Lines(body) {
		l = bytes.TrimSpace(l)
		if len(l) > 0 && l[0] != '#' {
			return true
		}
	}
	return false
}

// yamlLine matches the line numbers in YAML parser errors.
var yamlLine = regexp.MustCompile(`\bline (\d+)`)

// fileLines turns the parser's line numbers, which count from the document's start, into
// line numbers of the file, which is what an editor shows.
func fileLines(msg string, docStart int) string {
	return yamlLine.ReplaceAllStringFunc(msg, func(m string) string {
		n, err := strconv.Atoi(yamlLine.FindStringSubmatch(m)[1])
		if err != nil {
			return m
		}
		return "line " + strconv.Itoa(docStart+n-1)
	})
}

func fileError(reason, msg string) model.ObjectError {
	return model.ObjectError{Kind: KindFile, Reason: reason, Message: msg}
}

// oneLine keeps error messages on one line, as logs and the CLI expect.
func oneLine(s string) string {
	return string(bytes.Join(bytes.Fields([]byte(s)), []byte(" ")))
}
