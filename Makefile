.PHONY: demo test bench lint

demo:  ## gateway + console + 50 simulated agents (Ctrl-C stops)
	scripts/demo.sh

test:  ## lint, type check and the whole test suite, real services
	scripts/test.sh

bench:  ## ingest benchmark (quick); see bench/README.md
	scripts/bootstrap.sh test
	.venv/bin/python bench/ingest.py --quick

lint:
	.venv/bin/ruff check src tests bench
	.venv/bin/mypy
