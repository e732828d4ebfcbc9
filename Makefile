# dzhook — see README.md. `make test` is what CI runs (through .ci/run).

GO      ?= go
BIN     ?= bin/dzhook
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)

.PHONY: build test vet fmt-check deps demo bench chaos clean

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/dzhook

# The README's test command: formatting, vet, then every test with the race
# detector against a throwaway PostgreSQL (internal/pgtest).
test: fmt-check vet
	$(GO) test -race -count=1 -timeout 15m ./...
	$(GO) test -count=1 -timeout 5m ./internal/rawsock
	$(GO) test -count=1 -timeout 5m -run '$(RAWSOCKTESTS)' ./internal/fanout
	cd $(CHARTTEST) && $(GO) test -count=1 -timeout 10m ./...

# Under the race detector, sockets make the standard system calls
# (internal/rawsock/race.go), so the transport's tests run a second time
# without it, on the raw calls the binary makes. (internal/e2e's binary
# is built without it too.)
RAWSOCKTESTS := TestH1|TestEarlyAnswer|TestWriteRequest|TestPrivateCA|TestClientCertificate|TestDeliveryFaults|TestFailureClasses|TestClassify|TestProxy|TestRedirect|TestTimeoutMessage

# The Helm chart's render test is a module of its own, so that Helm and the
# Kubernetes libraries stay out of go.mod; ./... does not reach into it.
# (No -race there: it renders templates in one goroutine.)
CHARTTEST := deploy/helm/charttest

vet:
	$(GO) vet ./...
	cd $(CHARTTEST) && $(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

# What the tests need beyond Go and PostgreSQL: node and python3 with the
# npm packages standardwebhooks (signer interop) and playwright-core (the
# dashboard's browser test, which drives Debian's chromium: apt-get install
# chromium; npm never downloads a browser).
deps:
	cd signer/testdata && npm ci --no-audit --no-fund
	cd internal/dashboard/browsertest && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund

# The one-command demo: a throwaway PostgreSQL, dzhook, a verifying
# receiver, and a helpdesk story in SQL. DEMO_ONCE=1 exits 0 once every
# expected event arrived (CI); otherwise it runs until Ctrl-C.
demo: build
	@scripts/ensure-postgres.sh
	$(GO) run ./cmd/dzhook-demo $(if $(DEMO_ONCE),-once)

# The benchmark (BENCHMARKS.md): every scenario, or one with SCENARIO=live.
bench: build
	@scripts/ensure-postgres.sh
	$(GO) run ./cmd/dzhook-bench $(if $(SCENARIO),-scenario $(SCENARIO))

# The reliability suite at full size (RELIABILITY.md): 20,000 operations,
# 10 SIGKILLs and a PostgreSQL restart with chaotic receivers; 100,000
# events at a dead receiver; retention of 1,000,000 deliveries under load.
chaos: build
	@scripts/ensure-postgres.sh
	DZHOOK_CHAOS_OPS=20000 DZHOOK_CHAOS_KILLS=10 DZHOOK_CHAOS_RATE=700 DZHOOK_E2E_MEMORY_ROWS=100000 \
	DZHOOK_RETENTION_ROWS=1000000 DZHOOK_CHAOS_REPORT=$(CURDIR)/bench/chaos-report.txt \
	$(GO) test -count=1 -timeout 60m -v -run 'TestChaos|TestBoundedMemory|TestRetentionUnderLoad|TestIdleWAL' ./internal/e2e ./internal/engine

clean:
	rm -rf bin
