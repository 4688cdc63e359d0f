# Shortcuts; the scripts are the real commands and work without make.
.PHONY: run test lint ci

run:
	bin/run

test:
	bin/test

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

ci:
	bash .ci/run
