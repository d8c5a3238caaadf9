.PHONY: demo test bench bench-metrics bench-alerts bench-policy bench-console bench-store bench-scale lint

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

bench-store:  ## PostgreSQL store write rate with COPY (issue 8); see bench/store_postgres.py
	scripts/bootstrap.sh test
	scripts/services.sh
	.venv/bin/python bench/store_postgres.py

bench-scale:  ## scale mode end to end (issue 8): 2 gateways + 1 worker, NATS JetStream, PostgreSQL; see bench/scale.py
	scripts/bootstrap.sh test
	scripts/services.sh
	.venv/bin/python bench/scale.py

bench-console:  ## the console benchmark (issue 7 targets): fleet page, live tail; see docs/console.md
	scripts/bootstrap.sh test
	.venv/bin/python bench/console.py

lint:
	.venv/bin/ruff check src tests bench
	.venv/bin/mypy
