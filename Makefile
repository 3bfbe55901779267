# Value Engine — the README's commands live here. `make help` lists them.
.DEFAULT_GOAL := help
PY := .stack/venv/bin/python

.PHONY: help up test deps build release stack-up stack-down status fmt lint load

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

up: deps build ## start the whole system on the local stack (foreground; Ctrl-C stops it)
	$(PY) deploy/local/devstack.py run

test: ## install what is missing, start the local stack, run every test layer
	bash scripts/test.sh

deps: ## install the broker, the ClickHouse engine and Python tools into .stack/
	bash scripts/install-deps.sh

build: ## debug build of every binary
	cargo build --workspace --bins

release: ## optimized build (what the load figures use)
	cargo build --workspace --bins --release

stack-up: deps build ## start broker, registry, ClickHouse engine and object store only (background)
	$(PY) deploy/local/devstack.py up --infra-only

stack-down: ## stop everything the local stack started
	$(PY) deploy/local/devstack.py down

status: ## what runs, and whether each service is ready
	$(PY) deploy/local/devstack.py status

load: ## release build + whole stack + ve-load runs that produce the README's load table
	bash scripts/load.sh

fmt: ## format
	cargo fmt --all

lint: ## formatting and clippy with warnings denied
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
