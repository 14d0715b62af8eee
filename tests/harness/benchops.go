package harness

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"
)

// Child operations for the splice benchmarks: an echo server, request/response
// latency, and a bulk stream through it.
func init() {
	extraOps["bench-echo"] = benchEcho
	extraOps["bench-rr"] = benchRR
	extraOps["bench-stream"] = benchStream
}

// BenchEchoPort is where bench-echo listens.
const BenchEchoPort = 9000

// benchEcho echoes every byte back on every connection, copying through a buffer with
// read/write (as applications and Envoy do) until the client closes.
func benchEcho(ClientRequest) error {
	ln, err := net.Listen("tcp", fmt.Sprintf("[::]:%d", BenchEchoPort))
	if err != nil {
		return err
	}
	fmt.Println("ready")
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			_, _ = io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, make([]byte, 256<<10))
		}()
	}
}

// RRResult is the round-trip latency of one message size.
type RRResult struct {
	Size int
	N    int
	P50  time.Duration
	P90  time.Duration
}

// benchRR: Args[0] is the message size; N round trips on one connection to To.
func benchRR(req ClientRequest) error {
	size, err := strconv.Atoi(req.Args[0])
	if err != nil {
		return err
	}
	c, err := net.DialTimeout("tcp", req.To.String(), 3*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	msg := make([]byte, size)
	back := make([]byte, size)
	lat := make([]time.Duration, 0, req.N)
	for i := 0; i < req.N; i++ {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		start := time.Now()
		if _, err := c.Write(msg); err != nil {
			return err
		}
		if _, err := io.ReadFull(c, back); err != nil {
			return err
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	return json.NewEncoder(os.Stdout).Encode(RRResult{Size: size, N: len(lat), P50: lat[len(lat)/2], P90: lat[len(lat)*9/10]})
}

// StreamResult is one bulk transfer through the echo server.
type StreamResult struct {
	Bytes   int64
	Elapsed time.Duration
}

// benchStream: Args[0] bytes written (in Args[1]-byte writes) while the echo comes
// back concurrently; done when every byte has returned.
func benchStream(req ClientRequest) error {
	total, err := strconv.ParseInt(req.Args[0], 10, 64)
	if err != nil {
		return err
	}
	chunk, err := strconv.Atoi(req.Args[1])
	if err != nil {
		return err
	}
	c, err := net.DialTimeout("tcp", req.To.String(), 3*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Minute))
	start := time.Now()
	var wg sync.WaitGroup
	var werr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, chunk)
		for sent := int64(0); sent < total; {
			n := int(min(int64(chunk), total-sent))
			if _, err := c.Write(buf[:n]); err != nil {
				werr = err
				return
			}
			sent += int64(n)
		}
	}()
	buf := make([]byte, 256<<10)
	var got int64
	for got < total {
		n, err := c.Read(buf)
		got += int64(n)
		if err != nil {
			return errors.Join(err, werr)
		}
	}
	wg.Wait()
	if werr != nil {
		return werr
	}
	return json.NewEncoder(os.Stdout).Encode(StreamResult{Bytes: got, Elapsed: time.Since(start)})
}
