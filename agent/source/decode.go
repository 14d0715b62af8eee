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
	// Ignored counts objects of kinds the agent does not use, by "apiVersion/kind".
	Ignored map[string]int
	// Errors are all about the whole file (Kind KindFile). When there is any, Services
	// and Slices are empty: a half-read file would delete the services it failed to list.
	Errors []model.ObjectError
}

// Input is what the model is built from.
func (d Decoded) Input() model.Input {
	return model.Input{Services: d.Services, EndpointSlices: d.Slices, Pods: d.Pods, Policies: d.Policies}
}

// Decode reads multi-document Kubernetes YAML: v1 Services, discovery.k8s.io/v1
// EndpointSlices, v1 Pods, security.istio.io AuthorizationPolicies, and v1 Lists of them. Other kinds are skipped. Objects without a
// namespace get "default", as kubectl would give them. Any error is file-level and comes
// with no objects at all; see DecodeAll for the count of skipped objects.
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
		for k, n := range part.Ignored {
			d.Ignored[k] += n
		}
	}
	c.docs = seen
	if len(d.Errors) > 0 {
		d.Services, d.Slices, d.Pods, d.Policies = nil, nil, nil, nil
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

// object decodes one JSON object, recursing into List items.
func (d *Decoded) object(js []byte, where string) error {
	var head struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := json.Unmarshal(js, &head); err != nil {
		return fmt.Errorf("%s is not a Kubernetes object (a mapping with apiVersion and kind)", where)
	}
	// Without a kind we cannot tell a typo'd Service from something to skip; skipping it
	// could delete a live service, so the file is refused instead.
	if head.APIVersion == "" || head.Kind == "" {
		return fmt.Errorf("%s has no apiVersion or no kind", where)
	}
	switch {
	case head.Kind == "List":
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
	case head.APIVersion == "v1" && head.Kind == "Service":
		svc := &corev1.Service{}
		if err := json.Unmarshal(js, svc); err != nil {
			return fmt.Errorf("%s: Service: %v", where, err)
		}
		defaultNamespace(&svc.Namespace)
		d.Services = append(d.Services, svc)
	case head.APIVersion == "discovery.k8s.io/v1" && head.Kind == "EndpointSlice":
		slice := &discoveryv1.EndpointSlice{}
		if err := json.Unmarshal(js, slice); err != nil {
			return fmt.Errorf("%s: EndpointSlice: %v", where, err)
		}
		defaultNamespace(&slice.Namespace)
		d.Slices = append(d.Slices, slice)
	case head.APIVersion == "v1" && head.Kind == "Pod":
		pod := &corev1.Pod{}
		if err := json.Unmarshal(js, pod); err != nil {
			return fmt.Errorf("%s: Pod: %v", where, err)
		}
		defaultNamespace(&pod.Namespace)
		d.Pods = append(d.Pods, pod)
	case (head.APIVersion == "security.istio.io/v1" || head.APIVersion == "security.istio.io/v1beta1") &&
		head.Kind == "AuthorizationPolicy":
		p, err := decodePolicy(js)
		if err != nil {
			return fmt.Errorf("%s: AuthorizationPolicy: %v", where, err)
		}
		d.Policies = append(d.Policies, p)
	default:
		d.Ignored[head.APIVersion+"/"+head.Kind]++
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
