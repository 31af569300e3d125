#!/usr/bin/env bash
# The GPU figures in BENCHMARKS.md: run on a CUDA machine from the repository root. Where the machine cannot reach a
# package registry, put the missing wheels (datasets, open_clip_torch, jsonargparse, …) and the MiniLM tokenizer files
# in wheels/ and wheels/tokenizer beforehand.
set -uo pipefail
if ls wheels/*.whl >/dev/null 2>&1; then python3 -m pip install -q --no-deps wheels/*.whl; fi
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 LITEMBED_TOKENIZER_DIR=$PWD/wheels/tokenizer
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, transformers, lightning, sentence_transformers as st; print('torch', torch.__version__, 'transformers', transformers.__version__, 'lightning', lightning.__version__, 'sentence-transformers', st.__version__)"
python3 -m pytest -q -p no:warnings -m gpu tests/test_gpu.py tests/test_retrieval.py 2>&1 | tail -3
python3 bench/clip_seed_gpu.py --steps 20 2>&1 | tail -3
python3 bench/sync_probe.py --tokenizer wheels/tokenizer --steps 12 2>&1 | tail -4
python3 bench/text_speed.py --random-init bert-base --tokenizer wheels/tokenizer --precision bf16 --batch-size 32 \
    --steps 35 --eval-rows 800 --max-length 256 --rounds 3 2>&1 | tail -4
