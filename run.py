"""Run one experiment point, or a sweep with -m.  See README.md.

python run.py                                   # digits + small_cnn + BadNets, no defense
python run.py attack=blended trainer=tiny
python run.py -m experiment=core/attacks
"""

from __future__ import annotations

import json
import logging
import sys
import traceback

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from backdoor_bench.cache import atomic_write_json
from backdoor_bench.errors import ConfigError

log = logging.getLogger("run")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from backdoor_bench.pipeline import run

    hc = HydraConfig.get()
    out_dir = hc.runtime.output_dir
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        results = run(cfg, out_dir)
    except ConfigError as e:
        if multirun:  # one bad point of a sweep loses no other result
            log.error("config error: %s", e)
            atomic_write_json(f"{out_dir}/error.json", {"error": str(e), "kind": "config"})
            return None
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        if not multirun:
            raise
        log.error("this sweep point failed; the sweep goes on:\n%s", traceback.format_exc())
        atomic_write_json(f"{out_dir}/error.json", {"error": repr(e), "traceback": traceback.format_exc()})
        return None
    m = results["metrics"]
    summary = {k: (round(v, 4) if v is not None else None) for k, v in m.items()}
    print(
        f"result {cfg.dataset.name} {cfg.attack.name} {cfg.defense.name}: {json.dumps(summary)}  "
        f"({results['timing']['total']:.1f}s, {out_dir}/results.json)"
    )
    return m["acc"]


if __name__ == "__main__":
    main()
