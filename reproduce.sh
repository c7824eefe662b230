#!/usr/bin/env bash
# reproduce.sh: the paper's figures and a results report, from a fresh clone.
#
#   ./reproduce.sh                  quick profile: about 37 min on a 2-core CPU, no GPU (stage times in README.md)
#   ./reproduce.sh paper            paper profile: one GPU, the paper's sizes as far as one GPU allows
#   ./reproduce.sh quick fig4       one stage of a profile (stages are named after the figures)
#   ./reproduce.sh quick list       the stages, with what each one runs
#
# Writes out/<profile>/: fig*.png named after the paper's figures, results.md (each claim's
# test, its numbers and verdict, computed from the runs), runs/ (grok.py run directories) and
# logs/ (one log per stage). A finished stage is skipped; an interrupted stage runs again and
# resumes its runs from their checkpoints. Set OUT=dir to write elsewhere.
set -euo pipefail
cd "$(dirname "$0")"

if [ $# -gt 2 ]; then
  echo "error: too many arguments ($*); usage: ./reproduce.sh [PROFILE [STAGE]]" >&2; exit 2
fi
if { [ $# -ge 1 ] && [ -z "$1" ]; } || { [ $# -ge 2 ] && [ -z "$2" ]; }; then
  echo "error: an empty argument; usage: ./reproduce.sh [PROFILE [STAGE]], e.g. ./reproduce.sh quick fig4" >&2; exit 2
fi
PROFILE="${1:-quick}"
ONLY="${2:-all}"
case "$PROFILE" in
  quick|paper|tiny) ;;
  *) echo "error: unknown profile '$PROFILE'; allowed: quick, paper (tiny: the tests' toy scale)" >&2; exit 2 ;;
esac
ALL_STAGES="fig2 fig1a fig4 fig3 fig5 fig8 report"
case " $ALL_STAGES all list " in
  *" $ONLY "*) ;;
  *) echo "error: unknown stage '$ONLY'; allowed: $ALL_STAGES, all, list" >&2; exit 2 ;;
esac
OUT="${OUT:-out/$PROFILE}"
THREADS="${THREADS:-0}"      # CPU threads for torch (0 = all cores)
RUNS="$OUT/runs"
LOGS="$OUT/logs"

# ---- Setup: a virtual environment from requirements.txt (reused when it is already there).
# PYTHON=/path/to/python skips it and uses that interpreter (the tests do this). `list` needs none.
if [ "$ONLY" = list ]; then
  PY=true
elif [ -n "${PYTHON:-}" ]; then
  PY="$PYTHON"
else
  if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv and installing requirements.txt (about a minute)"
    python3 -m venv .venv
  fi
  if ! .venv/bin/python -c "import numpy, torch, matplotlib" 2>/dev/null; then
    .venv/bin/python -m pip install -q -r requirements.txt
  fi
  PY=.venv/bin/python
fi

# ---- Profiles: every size, grid and epoch count a stage uses. Both keep the paper's model and
# optimiser (App. A: lr 1e-3, betas 0.9/0.98, wd 1 for grokking); the quick one shrinks grids,
# seeds and epochs, and the modulus to 41 for semi-grokking and Fig. 8 only; each figure's title
# says what it ran. EXPECT_* are the stage times in
# seconds measured on a 2-core CPU (quick); the paper profile's are not measured yet.
MODEL=""                    # grok.py flags for the task and model; empty = the paper's (App. A)
if [ "$PROFILE" = tiny ]; then  # pipeline logic at toy scale, for tests/test_reproduce.py: nothing groks
  MODEL="--p 23 --d-model 32 --d-head 8 --d-mlp 64"
  GROK_EPOCHS=60
  UNGROK_SIZES=30,60
  UNGROK_WDS="1 2"
  UNGROK_DECAY=0.04
  UNGROK_SOURCE=full FULL_EPOCHS=30
  MEM_SIZES=30,60 MEM_WDS=1,2 MEM_SEEDS=0-1 MEM_EPOCHS=40
  GEN_SIZES=200,400 GEN_WDS=1,2 GEN_EPOCHS=20
  SEMI_MODEL="--p 11 --d-model 32 --d-head 8 --d-mlp 64" SEMI_SIZES=50,60 SEMI_SEEDS=0-1 SEMI_EPOCHS=60 SEMI_LOG_EVERY=10
  FIG8_MODEL="--p 11 --d-model 32 --d-head 8 --d-mlp 64" FIG8_TASKS="add div" FIG8_ADD_SEEDS=0-1 FIG8_EPOCHS=40
  FIG8_SIZES=20,40 FIG8_WDS="1 2" FIG8_DECAY=0.04
  EXPECT_fig2=10 EXPECT_fig1a=5 EXPECT_fig4=5 EXPECT_fig3=5 EXPECT_fig5=5 EXPECT_fig8=5 EXPECT_report=5
elif [ "$PROFILE" = quick ]; then
  GROK_EPOCHS=9000          # the standard run reaches 99% test accuracy near epoch 7800
  UNGROK_SIZES=150,250,400,550,750,1000,1400   # D' over the transition (paper, Fig. 7: 7 sizes in [390, 1494])
  UNGROK_WDS="1 2 3"        # weight decays for P3 (paper: "a range of weight decays")
  UNGROK_DECAY=6            # lr*wd*epochs for every wd: 6000 epochs at wd=1 (paper: 100k steps, App. A.2)
  UNGROK_SOURCE=grok        # ungrok the fig1a network (D=3830); the paper's source trains on every pair
  MEM_SIZES=150,300,600     # Fig. 3 C_mem-only: random-label runs over D x wd x seeds, from scratch
  MEM_WDS=1,2,3
  MEM_SEEDS=0-1
  MEM_EPOCHS=2500           # norms settle by 2000 at wd 2, 3; at wd=1 within 3% of their value at 3000
  GEN_SIZES=2000,6000       # Fig. 3 C_gen-only: the grokked network trained on at these D, and wds
  GEN_WDS=1,3
  GEN_EPOCHS=1000
  SEMI_MODEL="--p 41"       # semi-grokking from scratch needs ~1e7 epochs at p=113 (Fig. 6): p=41 here
  SEMI_SIZES=650,700,750,800  # around D_crit at p=41 from scratch (placed by a pilot sweep: README)
  SEMI_SEEDS=0-1
  SEMI_EPOCHS=6000
  SEMI_LOG_EVERY=100
  FIG8_MODEL="--p 41"       # Fig. 8 at p=41: each task's network first trained on every pair
  FIG8_TASKS="add div"      # add at p=41 too: its D_crit over network seeds
  FIG8_ADD_SEEDS=0-2
  FIG8_EPOCHS=3000          # training on all 1681 pairs first
  FIG8_SIZES=40,65,100,170,280,460,760,1250
  FIG8_WDS="1 3"
  FIG8_DECAY=2              # 2000 epochs at wd=1, 667 at wd=3
  EXPECT_fig2=10 EXPECT_fig1a=290 EXPECT_fig4=620 EXPECT_fig3=340 EXPECT_fig5=320 EXPECT_fig8=610 EXPECT_report=5
else
  GROK_EPOCHS=20000
  UNGROK_SIZES=390,480,590,720,880,1000,1080,1200,1320,1494,1800,2200
  UNGROK_WDS="0.3 1 3"
  UNGROK_DECAY=100          # 100k epochs at wd=1, as App. A.2
  UNGROK_SOURCE=full        # Fig. 4: first trained on all 12769 pairs
  FULL_EPOCHS=10000
  MEM_SIZES=250,500,1000,2000,4000
  MEM_WDS=0.3,0.5,1,2,3
  MEM_SEEDS=0-4
  MEM_EPOCHS=20000
  GEN_SIZES=3000,4500,6000,9000,12769
  GEN_WDS=0.3,0.5,1,2,3
  GEN_EPOCHS=20000
  SEMI_MODEL=""             # the paper's p=113: "10 seeds for each of 20 dataset sizes evenly spaced in [1500, 2050]"
  SEMI_SIZES=$(seq -s, 1500 29 2051)
  SEMI_SEEDS=0-9
  SEMI_EPOCHS=1000000       # the paper trains for up to 3e7 epochs (Fig. 6); one GPU cannot
  SEMI_LOG_EVERY=5000       # each record evaluates 200 runs on ~11k test pairs
  FIG8_MODEL=""
  FIG8_TASKS="add sub div cond sq quad quad_x cube cube_y s5_mul s5_conj s5_xyx"
  FIG8_ADD_SEEDS=0-4
  FIG8_EPOCHS=10000
  FIG8_SIZES=400,600,900,1350,2000,3000,4500,6750
  FIG8_WDS="0.3 1 3"
  FIG8_DECAY=100            # 100k steps at wd=1 (App. A, Fig. 8 caption)
  EXPECT_fig2=10 EXPECT_fig1a=0 EXPECT_fig4=0 EXPECT_fig3=0 EXPECT_fig5=0 EXPECT_fig8=0 EXPECT_report=5
fi

# ---- Stage runner: skip when done, keep a log, show an ETA, name the failed stage and its log.
# A stage is done when its marker $OUT/.done_NAME exists; the marker is written only after the
# stage's last command has succeeded, so an interrupted stage runs again (and resumes its runs).
stage() {  # stage NAME "what it runs" FUNCTION [always]
  local name="$1" what="$2" fn="$3" always="${4:-}"
  if [ "$ONLY" = list ]; then printf '  %-8s %s\n' "$name" "$what"; return 0; fi
  if [ "$ONLY" != all ] && [ "$ONLY" != "$name" ]; then return 0; fi
  local marker="$OUT/.done_$name"
  if [ -z "$always" ] && [ -e "$marker" ]; then echo "[$name] done already ($marker); skipped"; return 0; fi
  mkdir -p "$RUNS" "$LOGS"
  local log="$LOGS/$name.log" t0=$SECONDS expect="EXPECT_$name"
  local eta="${!expect:-0}"
  if [ "$eta" -gt 0 ]; then eta="about $(( (eta + 59) / 60 )) min on a 2-core CPU"; else eta="time not measured yet"; fi
  echo "[$name] $(date +%H:%M:%S) $what: $eta (log: $log)"
  # Run the stage in a subshell with errexit on: under `if ! fn`, bash would ignore set -e inside
  # fn and carry on past a failing command, so the exit status is taken this way instead.
  local rc=0
  set +e
  (set -e; "$fn") >>"$log" 2>&1
  rc=$?
  set -e
  if [ "$rc" -ne 0 ]; then
    echo "error: stage '$name' failed after $((SECONDS - t0)) s; its log is $log; last lines:" >&2
    tail -n 5 "$log" >&2
    exit 1
  fi
  [ -n "$always" ] || : >"$marker"
  echo "[$name] finished in $((SECONDS - t0)) s"
  echo "$name $((SECONDS - t0))" >>"$OUT/stage_times.txt"
}

# ---- Stage bodies

run_fig2() {  # Sec. 3 / App. C: the two-circuit toy model, Theorem D.4 and the phase picture
  $PY toy_sim.py --out "$OUT/fig2_toy.png" --csv
  $PY toy_sim.py --theorem --out "$OUT/theorem_d4.png"
  $PY toy_sim.py --phase --out "$OUT/toy_phase.png"
  $PY toy_sim.py --preset ungrok --out "$OUT/toy_ungrok.png"
  $PY toy_sim.py --preset semi --out "$OUT/toy_semi.png"
}

run_fig1a() {  # Fig. 1a and Fig. 9: the standard grokking run, with snapshots for the analysis
  $PY grok.py $MODEL --epochs "$GROK_EPOCHS" --snapshots 60 --threads "$THREADS" --out "$RUNS/grok"
  $PY analysis.py "$RUNS/grok" --out "$OUT/analysis_grok"
  $PY analysis.py --experiment fig1a "$RUNS/grok" --out "$OUT"
}

run_fig4() {  # Fig. 4, 7, 10 and 1b: ungrokking from a grokked network onto smaller subsets D'
  local dirs=() wd epochs src="$RUNS/grok"
  if [ "$UNGROK_SOURCE" = full ]; then
    # Fig. 4 caption: "We train on the full dataset (achieving 100% test accuracy), and then
    # continue training on a smaller subset". The quick profile starts from the fig1a network instead.
    $PY grok.py $MODEL --train 1.0 --epochs "$FULL_EPOCHS" --log-points 20 --log-every 500 --print-every 500 \
      --threads "$THREADS" --out "$RUNS/full"
    src="$RUNS/full"
  fi
  for wd in $UNGROK_WDS; do
    epochs=$($PY -c "print(round($UNGROK_DECAY / (1e-3 * $wd)))")  # equal lr*wd*epochs for every wd
    $PY grok.py $MODEL --init-from "$src" --train "$UNGROK_SIZES" --wd "$wd" --epochs "$epochs" \
      --log-points 40 --log-every 250 --print-every 500 --threads "$THREADS" --out "$RUNS/ungrok_wd$wd"
    dirs+=("$RUNS/ungrok_wd$wd")
  done
  $PY analysis.py --experiment fig4 "${dirs[@]}" --out "$OUT"
  $PY analysis.py --efficiency "${dirs[@]}" --out "$OUT/efficiency_ungrok"   # Fig. 10 (and its table)
  cp "$OUT/efficiency_ungrok/fig10.png" "$OUT/fig10_logit_ratio.png"
}

run_fig3() {  # Fig. 3 (P1): C_mem-only (random labels) and C_gen-only networks over D, wd and seeds
  $PY grok.py $MODEL --random-labels --train "$MEM_SIZES" --wd "$MEM_WDS" --seeds "$MEM_SEEDS" \
    --epochs "$MEM_EPOCHS" --log-points 30 --log-every 500 --print-every 500 --threads "$THREADS" --out "$RUNS/mem"
  # C_gen-only: Sec. 5.1 trains on "large dataset sizes"; here the grokked network is trained on
  # at other D and wd (cheaper than grokking anew), and the trig filter (> 95%) still applies.
  $PY grok.py $MODEL --init-from "$RUNS/grok" --train "$GEN_SIZES" --wd "$GEN_WDS" --epochs "$GEN_EPOCHS" \
    --log-points 20 --log-every 500 --print-every 500 --threads "$THREADS" --out "$RUNS/gen"
  # Pooled with every other true-label run of this model: the grokked run and the ungrokking sweep.
  local pool=("$RUNS/mem" "$RUNS/gen" "$RUNS/grok")
  for d in "$RUNS"/ungrok_wd*; do [ -e "$d/params.pt" ] && pool+=("$d"); done
  $PY analysis.py --efficiency "${pool[@]}" --out "$OUT/efficiency"
  cp "$OUT/efficiency/fig3.png" "$OUT/fig3_efficiency.png"
}

run_fig5() {  # Fig. 5, 6 and 1c (P4): semi-grokking, runs from scratch at D just above D_crit
  $PY grok.py $SEMI_MODEL --train "$SEMI_SIZES" --seeds "$SEMI_SEEDS" --epochs "$SEMI_EPOCHS" \
    --log-points 150 --log-every "$SEMI_LOG_EVERY" --print-every "$SEMI_LOG_EVERY" --threads "$THREADS" \
    --out "$RUNS/semi"
  $PY analysis.py --experiment semi "$RUNS/semi" --out "$OUT"
}

run_fig8() {  # Fig. 8: ungrokking on other tasks, from networks trained on every pair of each task
  local dirs=() task wd epochs seeds
  for task in $FIG8_TASKS; do
    # Addition gets several network seeds: its D_crit spread over seeds goes into results.md.
    seeds=0; [ "$task" = add ] && seeds="$FIG8_ADD_SEEDS"
    $PY grok.py $FIG8_MODEL --task "$task" --train 1.0 --seeds "$seeds" --epochs "$FIG8_EPOCHS" --log-points 20 \
      --log-every 500 --print-every 500 --threads "$THREADS" --out "$RUNS/full_$task"
    for wd in $FIG8_WDS; do
      epochs=$($PY -c "print(round($FIG8_DECAY / (1e-3 * $wd)))")  # equal lr*wd*epochs, as in fig4
      $PY grok.py $FIG8_MODEL --task "$task" --init-from "$RUNS/full_$task" --train "$FIG8_SIZES" --seeds "$seeds" \
        --wd "$wd" --epochs "$epochs" --log-points 20 --log-every 500 --print-every 500 --threads "$THREADS" \
        --out "$RUNS/ungrok8_${task}_wd$wd"
      dirs+=("$RUNS/ungrok8_${task}_wd$wd")
    done
  done
  $PY analysis.py --experiment fig8 "${dirs[@]}" --out "$OUT"
}

run_report() {  # results.md: every claim's test computed from the saved runs
  $PY analysis.py --report "$OUT" --profile "$PROFILE"
}

# ---- The pipeline
[ "$ONLY" = list ] && echo "stages of the $PROFILE profile:"
stage fig2   "toy model: Fig. 2, Theorem D.4, phase picture (toy_sim.py)" run_fig2
stage fig1a  "grokking run, Fig. 1a, Fig. 9, progress measures"          run_fig1a
stage fig4   "ungrokking sweep: Fig. 4, Fig. 7, Fig. 10, Fig. 1b"        run_fig4
stage fig3   "efficiency of C_mem and C_gen: Fig. 3 (P1)"              run_fig3
stage fig5   "semi-grokking sweep: Fig. 5, Fig. 6, Fig. 1c (P4)"          run_fig5
stage fig8   "ungrokking on other tasks: Fig. 8"                          run_fig8
stage report "results.md from the saved runs (always run again)"          run_report always
[ "$ONLY" = list ] && exit 0
echo "done: figures and results.md in $OUT"
