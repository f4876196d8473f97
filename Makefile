# The two set-up commands: `make run` (the dashboard on the bundled real X-ray sample) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 8501
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: run test test-fast benchmarks clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .  # `core` and `dashboard` importable, and the cxr-* commands
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m streamlit run dashboard/app.py --server.address localhost --server.port $(PORT)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not browser and not slow"

clean:
	rm -rf $(VENV) .pytest_cache

benchmarks: $(STAMP)
	for b in input_pipeline flops explain_latency memory train_speed sweep dashboard augmentation; do \
	  $(PY) -m benchmarks.$$b --quick || exit 1; done
	# A one-seed PneumoniaMNIST smoke of the quality benchmark, written beside the run store (the committed
	# results come from the full commands in benchmarks/RESULTS-quality.md).
	$(PY) -m benchmarks.quality --medmnist --rows small-cnn-scratch --seeds 1 --results models/quality-results \
	  --out models/quality-medmnist.md
	# Protocol S over the committed results (prints), and the starter's stability on 20 test films per class.
	$(PY) -m benchmarks.protocol_s
	$(PY) -m benchmarks.stability models/starter-efficientnet-lite0 --quick
	# A validation-only recipe choice in miniature (2 seeds, 100 films per class; prints, writes nothing).
	$(PY) -m benchmarks.recipe_choice --medmnist --rows small-cnn-scratch,small-cnn-scratch-64 --seeds 2 \
	  --max-images-per-class 100
