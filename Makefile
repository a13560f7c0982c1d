# assistd — see README.md. Every target works from a fresh clone.
CARGO ?= cargo
RUN_STATE ?= target/run-state

.PHONY: all build release run test lint bench clean

all: build

build:
	$(CARGO) build

release:
	$(CARGO) build --release

# Local mode on examples/tasks, in the foreground, logging to stderr. Ctrl-C stops it.
# `assistd journal --state-dir $(RUN_STATE)` (in another terminal) shows the results.
run: release
	mkdir -p $(RUN_STATE)
	./target/release/assistd agent --local examples/tasks --state-dir $(RUN_STATE)

# The README's test command, and what CI runs.
test: lint
	$(CARGO) test --all-targets

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

# Figures for the issues' closing notes (memory, load time, timer lateness, capture).
bench: release
	$(CARGO) build --release --example bench-timer
	./benches/run.sh

clean:
	$(CARGO) clean
