#!/usr/bin/env bash
# The GPU figures in BENCHMARKS.md: run on a CUDA machine from the repository root. Where the machine cannot reach a
# package registry, put the missing wheels (datasets, open_clip_torch, jsonargparse, …) and the MiniLM tokenizer files
# in wheels/ and wheels/tokenizer beforehand.
#
#   bash bench/gpu.sh                    # every section: checks vit text coco
#   bash bench/gpu.sh checks vit         # some of them, in this order
# Sections: checks (GPU tests, the seed architecture's first steps, host syncs), vit (ViT-L/14 at batch 16/64/256:
# pairs/s, MFU, peak memory, ratio to sentence-transformers' trainer), text (BERT-base at batch 32 and 128 against
# sentence-transformers), coco (the seed COCO recipe end to end on synthetic COCO-like data). All of them together take
# longer than one 10-minute device command: there run `bash bench/gpu.sh checks vit`, then `bash bench/gpu.sh text coco`.
set -uo pipefail
sections=("$@")
[ ${#sections[@]} -eq 0 ] && sections=(checks vit text coco)
for section in "${sections[@]}"; do
    case $section in checks | vit | text | coco) ;; *) echo "unknown section '$section': use checks, vit, text or coco" >&2; exit 2 ;; esac
done
if ls wheels/*.whl >/dev/null 2>&1; then python3 -m pip install -q --no-deps wheels/*.whl; fi
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 LITEMBED_TOKENIZER_DIR=$PWD/wheels/tokenizer
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, transformers, lightning, sentence_transformers as st; print('torch', torch.__version__, 'transformers', transformers.__version__, 'lightning', lightning.__version__, 'sentence-transformers', st.__version__)"

checks() {
    python3 -m pytest -q -p no:warnings -m gpu tests/test_gpu.py tests/test_retrieval.py 2>&1 | tail -3
    python3 bench/clip_seed_gpu.py --steps 20 2>&1 | tail -6
    python3 bench/sync_probe.py --tokenizer wheels/tokenizer --steps 12 2>&1 | tail -4
}

vit() {  # one line per run as it ends, then the table (9 runs)
    python3 bench/clip_seed_gpu.py --batch-size 16,64,256 --steps 25 --warmup-steps 5 --reference st --st-workers 0,4 \
        --no-eval 2>&1 | tail -23
}

text() {
    python3 bench/text_speed.py --random-init bert-base --tokenizer wheels/tokenizer --precision bf16 --batch-size 32 \
        --steps 35 --eval-rows 800 --max-length 256 --rounds 3 2>&1 | tail -4
    # the stdlib pairs (~2,100) hold 11 batches of 128 plus 400 evaluation rows; text_speed trains one epoch at most
    python3 bench/text_speed.py --random-init bert-base --tokenizer wheels/tokenizer --precision bf16 --batch-size 128 \
        --steps 11 --eval-rows 400 --max-length 256 --rounds 3 2>&1 | tail -4
}

coco() {
    python3 bench/coco_e2e.py 2>&1 | tail -45  # 8 lines; on a failure, the training log's last 40
}

for section in "${sections[@]}"; do
    echo "== $section"
    $section
done
