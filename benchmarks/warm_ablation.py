"""Where the warm Fig. 4c run's speed comes from: issue 10 target 2's levers switched off one at a time.

    ./dev run python benchmarks/warm_ablation.py             # ~1 min
    ./dev run python benchmarks/warm_ablation.py --repeat 8 --rounds 4

Fig. 4c of ``peer_race.py`` (defaults, outputs off) run warm in one process with each lever of the
Newton solve switched off in turn — from the outside, by patching what the library exposes — and
the variants interleaved round by round, so that all of them see the same machine load:

* ``defaults``: everything on;
* ``SNES iteration``: the same Newton iteration inside PETSc's SNES instead of the nodal problem's
  own loop (one more residual per solve: the SNES evaluates it after the accepted update);
* ``Jacobian every iteration``: no chord step (``NEWTON_LAG_JACOBIAN = 1``);
* ``PETSc tolerances only``: no update criterion (Newton to ``snes_rtol`` = 1e-10 of the first
  residual; no chord step, no own loop) — the Newton of before issue 10's target 2;
* ``own D_chem table per run``: every run builds its D_chem table (~5 ms) instead of sharing it.

Prints CPU time (``process_time``) best and median per variant, steps, Newton iterations, residual
and Jacobian evaluations, and the largest difference from the defaults in θ_center, θ_surface_min and θ_mean at 5/10/15/20 min. Timings are never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


@contextlib.contextmanager
def patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def variants():
    import nmcfx.materials.nmc as nmc
    from nmcfx.solver import problem

    original = problem.Problem.set_update_tolerance

    def snes_iteration(self, tol):
        on = original(self, tol)
        self._own_newton = False
        return on

    return {
        "defaults": contextlib.nullcontext,
        "SNES iteration": lambda: patched(problem.Problem, "set_update_tolerance", snes_iteration),
        "Jacobian every iteration": lambda: patched(problem, "NEWTON_LAG_JACOBIAN", 1),
        "PETSc tolerances only": lambda: patched(problem.Problem, "set_update_tolerance", lambda self, tol: False),
        "own D_chem table per run": lambda: patched(nmc, "_dchem_fingerprint", lambda material: None),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=6, help="timed warm runs per variant and round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    from mpi4py import MPI  # noqa: F401  (before dolfinx)


    import nmcfx
    from nmcfx.solver import problem
    from peer_race import case_config, observables

    counters = {}
    init = problem.Problem.__init__

    def keep(self, *a, **k):
        init(self, *a, **k)
        counters["last"] = self.counters

    problem.Problem.__init__ = keep
    work = Path(tempfile.mkdtemp(prefix="nmcfx-ablation-"))
    cpu = {k: [] for k in variants()}
    info = {}
    n = 0
    for _ in range(args.rounds):
        for name, ctx in variants().items():
            with ctx():
                if name not in info:  # untimed first run of the variant
                    n += 1
                    nmcfx.run(case_config("fig4c"), work / f"r{n}", progress=False)
                for _ in range(args.repeat):
                    n += 1
                    c0 = time.process_time()
                    r = nmcfx.run(case_config("fig4c"), work / f"r{n}", progress=False)
                    cpu[name].append(time.process_time() - c0)
            c = counters["last"]
            info[name] = (c.steps, c.rejected_steps, c.newton_iterations, c.residual_evaluations,
                          c.jacobian_evaluations, observables(r.timeseries))
    ref = info["defaults"][5]
    print(f"\nLun 2025 Fig. 4c warm, {args.rounds} rounds × {args.repeat} runs per variant (CPU s)")
    head = (f"{'variant':<28} {'CPU best':>9} {'median':>8} {'steps':>6} {'Newton':>6} {'residuals':>9} "
            f"{'Jacobians':>9}  max |Δθ| from the defaults at 5/10/15/20 min")
    print(head)
    print("-" * len(head))
    for name, ts in cpu.items():
        steps, rej, newton, res, jac, obs = info[name]
        diff = max(abs(obs[t][q] - ref[t][q]) for t in ref for q in ref[t])
        print(f"{name:<28} {min(ts):>9.4f} {statistics.median(ts):>8.4f} {f'{steps}({rej})':>6} {newton:>6} "
              f"{res:>9} {jac:>9}  {diff:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
