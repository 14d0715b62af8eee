# sockmesh: `sudo make demo` runs the main job, `sudo make test` runs the tests.
GO        ?= go
BIN       := bin/sockmesh
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)
STATICCHECK_VERSION := v0.8.2
TEST_FLAGS ?= -count=1 -timeout 40m

.PHONY: all deps build generate test demo bench lint clean

all: build

deps:
	@./scripts/install-deps.sh

build: deps
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/sockmesh

# Regenerates the bpf2go bindings; the output is committed and CI checks it is fresh.
generate: deps
	$(GO) generate ./bpf/... ./sockops/...

# Privileged tests skip without root/BPF on a laptop; CI=true turns those skips into
# failures (see tests/harness). The fuzz targets then run briefly each (FUZZTIME=0 skips
# them); a failing input lands in the package's testdata/fuzz, to commit with the fix.
FUZZTIME ?= 15s
FUZZ_TARGETS := ./agent:FuzzNothingProgrammedIsLost ./agent:FuzzIncrementalMatchesFull ./agent/lbmap:FuzzWriterWithinCapacity
test: deps
	$(GO) test $(TEST_FLAGS) ./...
	@if [ "$(FUZZTIME)" != 0 ]; then for t in $(FUZZ_TARGETS); do \
		echo "fuzz $$t for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$${t##*:}$$" -fuzztime $(FUZZTIME) $${t%%:*} || exit 1; \
	done; fi

demo: build
	./$(BIN) demo

bench: build
	$(GO) run ./tests/benchreport -out bench-out $(BENCH_ARGS)

lint: deps
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

clean:
	rm -rf bin bench-out
