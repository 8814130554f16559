#!/usr/bin/env bash
# The GPU runs recorded in benchmarks/results (issues 3, 5, 6), on one 2-GPU H200 machine.
#   phase=main : GPU0: SS1 numerics re-check, layer grid, GPT-2 training throughput (compile)
#                GPU1: GPU comparison report (4 kinds, GPT-2 small), model table (small, medium)
#   phase=ddp  : dense and SS1 GPT-2 small on 1 GPU and on 2 GPUs (Lightning DDP), equal global batch
#   phase=rerun: comparison report and model table again, then ddp (the second call of the session)
#   phase=kernels: SS1 kernel numerics and timings (KERNELS_MORE=seconds adds the R=2/8 grid)
#   phase=final: GPU0 SS1 numerics + the whole kernel table + block_n sweep; GPU1 GPT-2 MFU search
#   phase=refresh: GPU0: every kind at dense's best training setting, then the model table; GPU1: comparison report
#   phase=fused: GPU0: fused LM loss kernel alone, then dense MFU with loss {plain, fused} x attention
#                {SDPA, Triton} at micro-batch 64 and 128; GPU1: the rest of that grid and a profile
# Results go to $OUT/results.tgz. Carried: .whl (hydra/omegaconf/antlr wheels), .gpu/cache (the
# default corpus, tokenizer and token cache, which the machine cannot download).
set -u
phase=${1:-main}
OUT=${OUT:-/tmp/flyweight-gpu}
R=$OUT/r; mkdir -p "$R"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 FLYWEIGHT_OFFLINE=1
# SS1 autotune results of earlier calls (if carried), so a call does not tune the same shapes again
[ -f .gpu/ss1_autotune_h200.json ] && for g in 0 1; do cp .gpu/ss1_autotune_h200.json "$R/ss1_autotune_gpu$g.json"; done
export FLYWEIGHT_CACHE=$PWD/.gpu/cache NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$R/gpus.txt" 2>&1
python3 -c "import torch, triton, transformers, lightning; print(torch.__version__, triton.__version__, transformers.__version__, lightning.__version__)" >> "$R/gpus.txt" 2>&1
LM="model.size=small model.n_positions=1024 data.max_length=1024 trainer.ckpt_every_n_steps=0 trainer.eval_test=false trainer.val_every_n_steps=0"

run_compare() {
    timeout ${1:-330} python3 run.py experiment=compare device=cuda $LM data.global_batch_size=32 data.micro_batch_size=8 \
      model.dropout=0.1 optim.lr=6e-4 optim.warmup_steps=10 optim.schedule=linear compare.budget.tokens=3000000 \
      compare.inference.batch=8 compare.inference.prompt_len=128 compare.inference.decode_tokens=32 compare.inference.dtype=bfloat16 \
      compare.dir="$R/compare_gpu" compare.progress_bar=false hydra.run.dir="$R/compare_run" > "$R/compare.log" 2>&1
}
run_models() {
    timeout ${1:-200} python3 run.py experiment=models device=cuda 'models.sizes=[small,medium]' models.dtype=bfloat16 models.batch=8 \
      models.seq_len=1024 models.decode_tokens=32 models.results_dir="$R" hydra.run.dir="$R/models_run" > "$R/models.log" 2>&1
}
run_ddp() {
  for kind in dense ss1; do
    extra=""; [ $kind = ss1 ] && extra="+model.linear.compression=4"
    CUDA_VISIBLE_DEVICES=$([ $kind = dense ] && echo 0 || echo 1) timeout 150 python3 run.py experiment=tiny-lm $LM model.kind=$kind $extra \
      data.global_batch_size=64 data.micro_batch_size=8 trainer.max_steps=30 trainer.devices=1 trainer.progress_bar=false \
      optim.lr=6e-4 optim.warmup_steps=5 hydra.run.dir="$R/ddp_${kind}_1gpu" > "$R/ddp_${kind}_1gpu.log" 2>&1 &
  done
  wait
  for kind in dense ss1; do
    extra=""; [ $kind = ss1 ] && extra="+model.linear.compression=4"
    timeout 150 python3 run.py experiment=tiny-lm $LM model.kind=$kind $extra data.global_batch_size=64 data.micro_batch_size=8 \
      trainer.max_steps=30 trainer.devices=2 trainer.strategy=ddp trainer.progress_bar=false optim.lr=6e-4 optim.warmup_steps=5 \
      hydra.run.dir="$R/ddp_${kind}_2gpu" > "$R/ddp_${kind}_2gpu.log" 2>&1
  done
}

run_kernels() {  # SS1 kernels: numerics of every mode, the R=4 forward grid, Llama fwd+bwd, then R=2/8
  local C="python3 benchmarks/gpu_ss1_check.py --log-tuning"
  timeout 150 $C --out "$R/ss1" --quick-numerics --budget 0 > "$R/ss1_numerics.log" 2>&1
  timeout 260 $C --out "$R/ss1_r4" --skip-numerics --rs 4 --ms 8192,2048,256,16 --dtypes bfloat16 --passes fwd \
    --budget 220 > "$R/ss1_r4.log" 2>&1
  timeout 150 $C --out "$R/ss1_bwd" --skip-numerics --rs 2,4,8 --ms 8192 --dtypes bfloat16 --passes fwd+bwd \
    --shapes llama-up,llama-down,llama-qo,gpt2-fc --budget 120 > "$R/ss1_bwd.log" 2>&1
  [ -n "${KERNELS_MORE:-}" ] && timeout "$KERNELS_MORE" $C --out "$R/ss1_r28" --skip-numerics --rs 2,8 \
    --ms 8192,2048,256,16 --dtypes bfloat16 --passes fwd --budget $((KERNELS_MORE - 40)) > "$R/ss1_r28.log" 2>&1
}

run_final_grid() {  # SS1 numerics (fp16 + bf16, every mode), then the whole table and a block_n sweep
  local C="python3 benchmarks/gpu_ss1_check.py --log-tuning --out $R/ss1_grid"
  timeout 200 $C --budget 0 > "$R/ss1_numerics_full.log" 2>&1
  timeout $(( $1 - 200 )) $C --skip-numerics --budget $(( $1 - 300 )) --block-n-sweep 32,128,256 > "$R/ss1_grid.log" 2>&1
}
run_mfu() {  # dense GPT-2 small: micro-batch search, vocabulary padding, dropout; then every kind
  timeout $1 python3 benchmarks/gpt2_train_gpu.py --out "$R/mfu" --part search --kinds dense,ss1,monarch,lowrank \
    --pad-vocab 64,0 --dropout 0.0,0.1 --batch-start 32 --batch-max 128 --steps 15 --warmup-steps 3 > "$R/mfu.log" 2>&1
}

run_fused() {  # the fused LM loss and the Triton attention, alone and in the dense training step
  local B="python3 benchmarks/gpt2_train_gpu.py --kinds dense --pad-vocab 64 --dropout 0.0 --steps 15 --warmup-steps 3"
  local T="$B --part throughput --out $R/mfu_gpu$1"
  if [ "$1" = 0 ]; then
    timeout 100 python3 benchmarks/lm_loss_gpu.py --out "$R/lm_loss" > "$R/lm_loss.log" 2>&1
    timeout 80 $T --batch-sizes 64 --sdpa-backend auto > "$R/mfu_sdpa_plain.log" 2>&1
    timeout 80 $T --batch-sizes 64 --sdpa-backend auto --fused-loss > "$R/mfu_sdpa_fused.log" 2>&1
    timeout 80 $T --batch-sizes 64 --sdpa-backend triton --fused-loss > "$R/mfu_triton_fused.log" 2>&1
    timeout 100 $T --batch-sizes 128 --sdpa-backend auto --fused-loss > "$R/mfu_sdpa_fused_b128.log" 2>&1
  else
    timeout 80 $T --batch-sizes 64 --sdpa-backend triton > "$R/mfu_triton_plain.log" 2>&1
    timeout 100 $T --batch-sizes 128 --sdpa-backend triton --fused-loss > "$R/mfu_triton_fused_b128.log" 2>&1
    timeout 100 $B --part profile --out "$R/profile" --batch-sizes 64 --sdpa-backend triton --fused-loss > "$R/profile.log" 2>&1
  fi
}

if [ "$phase" = refresh ]; then  # after the fused phase: every kind at dense's best setting; the stale tables again
  (export CUDA_VISIBLE_DEVICES=0 FLYWEIGHT_SS1_AUTOTUNE_CACHE=$R/ss1_autotune_gpu0.json
   timeout 260 python3 benchmarks/gpt2_train_gpu.py --part throughput --kinds dense,ss1,lowrank,monarch --pad-vocab 64 \
     --dropout 0.0 --steps 15 --warmup-steps 3 --batch-sizes 128 --fused-loss --sdpa-backend triton --out "$R/kinds" > "$R/kinds.log" 2>&1
   run_models 250) &
  (export CUDA_VISIBLE_DEVICES=1 FLYWEIGHT_SS1_AUTOTUNE_CACHE=$R/ss1_autotune_gpu1.json; run_compare 400) &
  wait
elif [ "$phase" = fused ]; then
  (export CUDA_VISIBLE_DEVICES=0; run_fused 0) &
  (export CUDA_VISIBLE_DEVICES=1; run_fused 1) &
  wait
elif [ "$phase" = final ]; then
  (export CUDA_VISIBLE_DEVICES=0 FLYWEIGHT_SS1_AUTOTUNE_CACHE=$R/ss1_autotune_gpu0.json; run_final_grid 540) &
  (export CUDA_VISIBLE_DEVICES=1 FLYWEIGHT_SS1_AUTOTUNE_CACHE=$R/ss1_autotune_gpu1.json; run_mfu 540) &
  wait
elif [ "$phase" = kernels ]; then
  export FLYWEIGHT_SS1_AUTOTUNE_CACHE=$R/ss1_autotune_gpu0.json
  run_kernels
elif [ "$phase" = rerun ]; then
  # after the main call: the comparison and model table again (autocast/optimizer fixes), then DDP
  (export CUDA_VISIBLE_DEVICES=0 FLYWEIGHT_SS1_AUTOTUNE_CACHE=$R/ss1_autotune_gpu0.json; run_models 230) &
  (export CUDA_VISIBLE_DEVICES=1 FLYWEIGHT_SS1_AUTOTUNE_CACHE=$R/ss1_autotune_gpu1.json; run_compare 250) &
  wait
  FLYWEIGHT_SS1_AUTOTUNE_CACHE=$R/ss1_autotune_gpu1.json run_ddp
elif [ "$phase" = main ]; then
  (
    export CUDA_VISIBLE_DEVICES=0 FLYWEIGHT_SS1_AUTOTUNE_CACHE=$R/ss1_autotune_gpu0.json
    timeout 100 python3 benchmarks/gpu_ss1_check.py --out "$R/ss1check" --quick-numerics --budget 5 --rs 4 --ms 16 --passes fwd > "$R/ss1_numerics.log" 2>&1
    timeout 220 python3 run.py experiment=layers device=cuda 'layers.shapes=[gpt2-small,llama-8b]' 'layers.tokens=[16,2048,8192]' \
      'layers.dtypes=[bfloat16]' 'layers.passes=[fwd,fwd+bwd]' layers.budget_s=0.05 layers.results_dir="$R" hydra.run.dir="$R/layers_run" > "$R/layers.log" 2>&1
    timeout 230 python3 benchmarks/gpt2_train_gpu.py --out "$R/train_gpu" --part throughput --batch-sizes 32 --steps 15 --data benchmarks/data/wiki_offline > "$R/throughput.log" 2>&1
  ) &
  (export CUDA_VISIBLE_DEVICES=1 FLYWEIGHT_SS1_AUTOTUNE_CACHE=$R/ss1_autotune_gpu1.json; run_compare 330; run_models 200) &
  wait
else
  run_ddp
fi
find "$R" -name "*.ckpt" -delete; find "$R" -path "*/model/*" -name "*.safetensors" -delete
tar czf "$OUT/results_$phase.tgz" -C "$OUT" r
ls -la "$OUT"; for f in "$R"/*.log; do echo "== $f"; tail -n 4 "$f"; done
