.PHONY: demo test bench bench-metrics bench-alerts bench-policy lint

demo:  ## gateway + console + 50 simulated agents (Ctrl-C stops)
	scripts/demo.sh

test:  ## lint, type check and the whole test suite, real services
	scripts/test.sh

bench:  ## the ingest benchmark behind the README's figures; see bench/README.md
	scripts/bootstrap.sh test
	.venv/bin/python bench/ingest.py --batch 50

bench-metrics:  ## the metrics benchmark (issue 3 targets); see bench/README.md
	scripts/bootstrap.sh test
	.venv/bin/python bench/metrics.py

bench-alerts:  ## the alerts benchmark (issue 4 targets); see bench/README.md
	scripts/bootstrap.sh test
	.venv/bin/python bench/alerts.py

bench-policy:  ## the policy benchmark (issue 5 targets); see bench/README.md
	scripts/bootstrap.sh test
	.venv/bin/python bench/policy.py

lint:
	.venv/bin/ruff check src tests bench
	.venv/bin/mypy
