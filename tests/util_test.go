package tests

import (
	"io"
	"strconv"
	"strings"
)

func stringReader(s string) io.Reader { return strings.NewReader(s) }

func itoa(i int) string { return strconv.Itoa(i) }
