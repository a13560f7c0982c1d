# assistd — see README.md. Every target works from a fresh clone.
CARGO ?= cargo
RUN_STATE ?= target/run-state

.PHONY: all build release run test lint bench soak fuzz clean static static-local static-aarch64 install uninstall deb

all: build

build:
	$(CARGO) build

release:
	$(CARGO) build --release

# Local mode on examples/tasks, in the foreground, logging to stderr, each line a task prints
# included. Ctrl-C stops it. `assistd journal --state-dir $(RUN_STATE)` shows the results.
# The task files must not be writable by group or others (the agent refuses them): a
# checkout made under umask 002 is fixed by the chmod.
run: release
	mkdir -p $(RUN_STATE)
	chmod go-w examples/tasks examples/tasks/*.json
	./target/release/assistd agent --local examples/tasks --state-dir $(RUN_STATE) --log-task-output

# The README's test command, and what CI runs: both builds, the full one (feature `remote`,
# the default) and the local-only one (--no-default-features).
test: lint
	$(CARGO) test --all-targets
	$(CARGO) test --all-targets --no-default-features

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --all-targets --no-default-features -- -D warnings

# Figures for the issues' closing notes (sizes, idle memory and threads, memory per task,
# load time, timer lateness, capture, remote mode). busybox crond is measured beside the
# agent when busybox has it; nothing requires it.
bench: release
	$(CARGO) build --release --example bench-timer --example bench-remote
	-$(MAKE) static
	-$(MAKE) static-local
	./benches/run.sh

# A bounded soak of the agent as shipped (the static binary, `make static`) against the
# control-plane double (examples/soak.rs): 200 concurrent once-tasks per batch, 5,000 periodic
# tasks, 1 in 10 report requests failing, a SIGTERM and a SIGKILL restart; then every final
# report accounted for, no processes left, fds back at idle, anonymous RSS not growing
# (the binary's own pages come in as code first runs: not a leak). SOAK_SECS (default 600)
# sets its length. Then the spool figure: 10,000 spooled reports, their size on disk and the
# time to drain them. Not part of `make test`. The static binary matters for the RSS figure:
# glibc's malloc keeps a 64 MiB arena per busy thread (500 workers here), musl's does not.
soak: release static
	$(CARGO) build --release --example soak
	./target/release/examples/soak target/static/assistd --secs $(or $(SOAK_SECS),600)
	./target/release/examples/soak target/static/assistd --spool 10000

# Every fuzz target (fuzz/README.md) for FUZZ_SECS seconds each (default 60); installs
# cargo-fuzz when missing. A crash or a slow input fails the target.
fuzz:
	FUZZ_SECS=$(or $(FUZZ_SECS),60) ./fuzz/run.sh

clean:
	$(CARGO) clean

# Packaging (README "Install"). `static` builds a fully static x86_64 binary into
# target/static/assistd: musl when the x86_64-unknown-linux-musl target is installed, else a
# static glibc build; it prints the flavour, `ldd` and the size.
static:
	CARGO=$(CARGO) ./packaging/build-static.sh x86_64

# The local-only agent for embedded hosts (no server protocol, no TLS) into
# target/static-local/assistd; same flavours as `static`.
static-local:
	CARGO=$(CARGO) STATIC_LOCAL_ONLY=1 ./packaging/build-static.sh x86_64

# target/static/aarch64/assistd, or a message saying why this machine cannot build it.
static-aarch64:
	CARGO=$(CARGO) ./packaging/build-static.sh aarch64

# Installs target/static/assistd (run `make static` first, as yourself, not as root), the
# config, the state dirs and the service for the detected init. `make install
# DESTDIR=/tmp/root` touches nothing outside /tmp/root. INSTALL_FLAGS="--init openrc" etc.
INSTALL_FLAGS ?=
install:
	DESTDIR="$(DESTDIR)" ./packaging/install.sh $(INSTALL_FLAGS)

# Keeps /etc/assistd and /var/lib/assistd; INSTALL_FLAGS=--purge removes them too.
uninstall:
	DESTDIR="$(DESTDIR)" ./packaging/install.sh --uninstall $(INSTALL_FLAGS)

# A .deb from target/static/assistd and packaging/, built with dpkg-deb; prints its path.
deb: static
	./packaging/build-deb.sh
