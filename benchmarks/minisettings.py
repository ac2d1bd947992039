"""Settings shared by the benchmarks on mini-NSD (bench_align, bench_imagery): the tiny seeded models.

Their outputs measure relative decodability on simulated cortex, never picture quality.
"""
EXTRACTORS = {"pixels": {"side": 16}, "vdvae": {"tiny": True, "n_blocks": 4}, "clip-text": {"tiny": True},
              "clip-vision": {"tiny": True}}
#: stage 2 (Versatile Diffusion) small enough for a CPU
VD = {"size": 32, "steps": 6, "strength": 0.6, "dtype": "float32", "guidance": 2.0}
#: one ridge setting for every fit: an alpha grid chosen by GCV, non-transductive calibration
RIDGE = {"alpha": [1e0, 1e1, 1e2, 1e3, 3e3, 1e4, 3e4, 1e5, 1e6], "alpha_groups": "all", "calibration": "loo"}
#: the evaluation networks both benchmarks score with (the tests' tiny ones)
NETS = ["alexnet2", "clip"]
