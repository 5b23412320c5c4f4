#!/bin/bash
# Example (not run by the tests): interfuse on 2 nodes x 4 GPUs with SLURM and Lightning DDP.
# Lightning reads the SLURM variables (SLURM_PROCID, SLURM_NTASKS, SLURM_NODEID, the node list)
# to find the master and each process's rank, so every task runs the same command.
# The run folder and the dataset folder must be on a file system every node sees.
#SBATCH --job-name=interfuse-ddp
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4          # one task per GPU (= --devices)
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --signal=SIGTERM@120         # stop cleanly 2 minutes before the limit (exit 143, resumable)

set -euo pipefail
DATA=/shared/datasets/mosei-lazy     # written once by: interfuse convert mosei.pkl $DATA --dataset mosei
RUN=/shared/runs/mosei-ddp

# --resume continues from last.safetensors when the job is requeued; the first job starts afresh
RESUME=$([ -f "$RUN/last.safetensors" ] && echo --resume || true)

srun interfuse train --dataset lazy --data-path "$DATA" --out "$RUN" $RESUME \
    --device cuda --devices 4 --num-nodes 2 --strategy ddp --sync-stats \
    --precision bf16-mixed --batch-size 256 --quiet
