package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"unicode/utf8"

	"github.com/sockmesh/sockmesh/agent/lbmap"
)

// The two outputs of `lb list`, written straight into a buffer: at 30k services a
// text/tabwriter table or an indented encoding/json document costs more than reading the
// maps. The bytes are the same as theirs (lbformat_test.go holds both side by side).

// bufferSize is how much output the tabwriter path gathers before each write (the
// others write a chunk of rows at a time).
const bufferSize = 256 << 10

// tablePadding is the padding the table's columns had under tabwriter.NewWriter(out, 0,
// 4, 2, ' ', 0): each column is as wide as its widest cell plus two spaces.
const tablePadding = 2

var tableHeader = [...]string{"SERVICE", "FRONTEND", "AFFINITY", "BACKENDS"}

// fillFunc fills the Backends of the services [from, to), valid until its next call.
type fillFunc func(from, to int)

// backendsFiller makes one fillFunc for each goroutine that formats rows; nil when the
// services' Backends are set already.
type backendsFiller func() fillFunc

// fillFrom is the backendsFiller of a listing, for rows of its Headers.
func fillFrom(l *lbmap.Listing) backendsFiller {
	return func() fillFunc {
		b := l.NewBuilder()
		return func(from, to int) { b.Fill(l.Headers(), from, to) }
	}
}

// newFill is one goroutine's fillFunc: a no-op where the Backends are set already.
func (f backendsFiller) newFill() fillFunc {
	if f == nil {
		return func(int, int) {}
	}
	return f()
}

// writeTable writes the services as the aligned table; the widths come from the
// headers alone, so the backends are filled a chunk of rows at a time.
func writeTable(out io.Writer, svcs []lbmap.ListedService, fill backendsFiller) error {
	// A cell that tabwriter would read as more than text (a cell or line break, its
	// escape byte: a name can hold anything) goes through tabwriter itself.
	for i := range svcs {
		if !plainCell(svcs[i].Name) || !plainCell(svcs[i].Frontend) {
			return writeTabwriter(out, svcs, fill)
		}
	}
	affs := make([]string, len(svcs))
	width := [3]int{}
	for i, h := range tableHeader[:3] {
		width[i] = len(h)
	}
	for i := range svcs {
		s := &svcs[i]
		affs[i] = affinityCell(s)
		width[0] = max(width[0], utf8.RuneCountInString(s.Name))
		width[1] = max(width[1], utf8.RuneCountInString(s.Frontend))
		width[2] = max(width[2], len(affs[i]))
	}
	pad := []byte(strings.Repeat(" ", max(width[0], width[1], width[2])+tablePadding))
	cell := func(buf []byte, text string, col int) []byte {
		buf = append(buf, text...)
		return append(buf, pad[:width[col]+tablePadding-utf8.RuneCountInString(text)]...)
	}

	var head []byte
	for i, h := range tableHeader[:3] {
		head = cell(head, h, i)
	}
	head = append(head, tableHeader[3]...)
	if _, err := out.Write(append(head, '\n')); err != nil {
		return err
	}
	fixed := width[0] + width[1] + width[2] + 3*tablePadding + 1
	return writeRows(out, svcs, fill, func(s *lbmap.ListedService) int {
		return fixed + len("(none: connects refused)") + len(s.Backends)*len("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535, ")
	}, func(row []byte, i int) []byte {
		s := &svcs[i]
		row = cell(row, s.Name, 0)
		row = cell(row, s.Frontend, 1)
		row = cell(row, affs[i], 2)
		row = appendBackendsCell(row, s)
		return append(row, '\n')
	})
}

// rowsPerChunk is how many rows one goroutine fills and formats at a time: at 10
// backends a service, some 64 KB of table or 300 KB of JSON, and 120 KB of backends,
// which stay in a CPU's cache (1024 rows faulted in 1,000 pages more and ran no faster).
const rowsPerChunk = 256

// writeRows writes the rows of svcs, each appended by appendRow. Filling the backends
// and formatting are most of the work once the maps are read, so one goroutine per CPU
// fills and formats every so many chunk (worker w the chunks w, w+workers, ...), while
// this one writes the chunks in order as they come: the writing, some 30 MB of JSON at
// 30k services, overlaps the formatting. Each worker formats into two buffers in
// turn, one being written while it fills the other. A buffer is sized from rowSize,
// an upper bound of a row's bytes, so it never grows by copying into fresh memory.
func writeRows(out io.Writer, svcs []lbmap.ListedService, fill backendsFiller, rowSize func(*lbmap.ListedService) int, appendRow func(buf []byte, i int) []byte) error {
	n := len(svcs)
	chunks := (n + rowsPerChunk - 1) / rowsPerChunk
	workers := min(runtime.GOMAXPROCS(0), chunks)
	type worker struct {
		formatted chan []byte // its chunks, in order
		free      chan []byte // its buffers, back from the writer
	}
	ws := make([]worker, workers)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	defer wg.Wait()
	defer close(stop)
	for w := range ws {
		ws[w] = worker{formatted: make(chan []byte, 1), free: make(chan []byte, 2)}
		ws[w].free <- nil
		ws[w].free <- nil
		fillChunk := fill.newFill()
		wg.Go(func() {
			for c := w; c < chunks; c += workers {
				var buf []byte
				select {
				case buf = <-ws[w].free:
				case <-stop:
					return
				}
				from, to := c*rowsPerChunk, min(n, (c+1)*rowsPerChunk)
				fillChunk(from, to)
				size := 0
				for i := from; i < to; i++ {
					size += rowSize(&svcs[i])
				}
				if buf = buf[:0]; cap(buf) < size {
					buf = make([]byte, 0, size+size/4) // room for the chunks after
				}
				for i := from; i < to; i++ {
					buf = appendRow(buf, i)
				}
				select {
				case ws[w].formatted <- buf:
				case <-stop: // the writer failed
					return
				}
			}
		})
	}
	for c := range chunks {
		w := &ws[c%workers]
		buf := <-w.formatted
		if _, err := out.Write(buf); err != nil {
			return err
		}
		w.free <- buf
	}
	return nil
}

// plainCell says whether tabwriter takes s as text alone: no cell or line break, no
// escape byte.
func plainCell(s string) bool {
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\t', '\v', '\n', '\f', tabwriter.Escape:
			return false
		}
	}
	return true
}

func affinityCell(s *lbmap.ListedService) string {
	if s.AffinitySeconds > 0 {
		return strconv.FormatUint(uint64(s.AffinitySeconds), 10) + "s"
	}
	return "-"
}

// appendBackendsCell appends the backends, a backend's share of the slots where it is
// not the even one.
func appendBackendsCell(buf []byte, s *lbmap.ListedService) []byte {
	if len(s.Backends) == 0 {
		return append(buf, "(none: connects refused)"...)
	}
	even := int(s.Slots) / len(s.Backends)
	for i, b := range s.Backends {
		if i > 0 {
			buf = append(buf, ", "...)
		}
		if b.Address.IsValid() {
			buf = b.Address.AppendTo(buf) // what String returns, for a valid one
		} else {
			buf = append(buf, b.Address.String()...)
		}
		if b.Slots != even {
			buf = append(buf, " ("...)
			buf = strconv.AppendInt(buf, int64(b.Slots), 10)
			buf = append(buf, '/')
			buf = strconv.AppendUint(buf, uint64(s.Slots), 10)
			buf = append(buf, ')')
		}
	}
	return buf
}

// writeTabwriter is the table as text/tabwriter aligns it.
func writeTabwriter(out io.Writer, svcs []lbmap.ListedService, fill backendsFiller) error {
	w := bufio.NewWriterSize(out, bufferSize)
	tw := tabwriter.NewWriter(w, 0, 4, tablePadding, ' ', 0)
	fmt.Fprintln(tw, strings.Join(tableHeader[:], "\t"))
	fillChunk := fill.newFill()
	var line []byte
	for i := range svcs {
		if i%rowsPerChunk == 0 {
			fillChunk(i, min(len(svcs), i+rowsPerChunk))
		}
		s := &svcs[i]
		line = append(line[:0], s.Name...)
		line = append(line, '\t')
		line = append(line, s.Frontend...)
		line = append(line, '\t')
		line = append(line, affinityCell(s)...)
		line = append(line, '\t')
		line = appendBackendsCell(line, s)
		line = append(line, '\n')
		tw.Write(line)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	return w.Flush()
}

// writeJSON writes the services as json.Encoder with SetIndent("", "  ") encodes them.
func writeJSON(out io.Writer, svcs []lbmap.ListedService, fill backendsFiller) error {
	if svcs == nil {
		_, err := io.WriteString(out, "null\n")
		return err
	}
	if len(svcs) == 0 {
		_, err := io.WriteString(out, "[]\n")
		return err
	}
	err := writeRows(out, svcs, fill, jsonRowSize, func(buf []byte, i int) []byte {
		s := &svcs[i]
		if i == 0 {
			buf = append(buf, '[')
		} else {
			buf = append(buf, ',')
		}
		buf = append(buf, "\n  {\n    \"id\": "...)
		buf = strconv.AppendUint(buf, uint64(s.ID), 10)
		buf = append(buf, ",\n    \"name\": "...)
		buf = appendJSONString(buf, s.Name)
		buf = append(buf, ",\n    \"frontend\": "...)
		buf = appendJSONString(buf, s.Frontend)
		if s.AffinitySeconds != 0 {
			buf = append(buf, ",\n    \"affinitySeconds\": "...)
			buf = strconv.AppendUint(buf, uint64(s.AffinitySeconds), 10)
		}
		buf = append(buf, ",\n    \"slots\": "...)
		buf = strconv.AppendUint(buf, uint64(s.Slots), 10)
		switch {
		case s.Backends == nil:
			buf = append(buf, ",\n    \"backends\": null\n  }"...)
		case len(s.Backends) == 0:
			buf = append(buf, ",\n    \"backends\": []\n  }"...)
		default:
			buf = append(buf, ",\n    \"backends\": ["...)
			for j, b := range s.Backends {
				if j > 0 {
					buf = append(buf, ',')
				}
				buf = append(buf, "\n      {\n        \"id\": "...)
				buf = strconv.AppendUint(buf, uint64(b.ID), 10)
				buf = append(buf, ",\n        \"address\": "...)
				buf = appendJSONAddrPort(buf, b.Address)
				buf = append(buf, ",\n        \"slots\": "...)
				buf = strconv.AppendInt(buf, int64(b.Slots), 10)
				buf = append(buf, "\n      }"...)
			}
			buf = append(buf, "\n    ]\n  }"...)
		}
		return buf
	})
	if err != nil {
		return err
	}
	_, err = io.WriteString(out, "\n]\n")
	return err
}

// jsonRowSize bounds a service's bytes in writeJSON: its names escaped at worst as
// \u00XX, six bytes a byte.
func jsonRowSize(s *lbmap.ListedService) int {
	const service = len(",\n  {\n    \"id\": 4294967295,\n    \"name\": \"\",\n    \"frontend\": \"\",\n    \"affinitySeconds\": 4294967295,\n    \"slots\": 4294967295,\n    \"backends\": [\n    ]\n  }")
	const backend = len(",\n      {\n        \"id\": 4294967295,\n        \"address\": \"[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535\",\n        \"slots\": -9223372036854775808\n      }")
	return service + 6*(len(s.Name)+len(s.Frontend)) + backend*len(s.Backends)
}

// appendJSONString appends s as a JSON string; what needs escaping (quotes, control
// bytes, <, > and & as json.Encoder escapes them, non-ASCII) goes through encoding/json.
func appendJSONString(buf []byte, s string) []byte {
	if !plainJSON(s) {
		q, err := json.Marshal(s)
		if err != nil { // cannot happen for a string
			panic(err)
		}
		return append(buf, q...)
	}
	buf = append(buf, '"')
	buf = append(buf, s...)
	return append(buf, '"')
}

// plainJSON says whether s stands in a JSON string as it is.
func plainJSON(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}

// appendJSONAddrPort appends an address as encoding/json writes it (its MarshalText,
// quoted). Without a zone, that text is digits, hex letters, dots, colons and brackets.
func appendJSONAddrPort(buf []byte, a netip.AddrPort) []byte {
	if a.Addr().Zone() != "" {
		text, _ := a.MarshalText() // never fails
		return appendJSONString(buf, string(text))
	}
	buf = append(buf, '"')
	buf = a.AppendTo(buf) // MarshalText is AppendTo, "" for the zero AddrPort
	return append(buf, '"')
}
