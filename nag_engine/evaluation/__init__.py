"""Evaluation of samples with the standard tools: FID, Inception Score and precision/recall
(`nag-engine evaluate`), and the export of samples to the ADM evaluation suite's format
(`nag-engine export`).

* `inputs`: the images of a sample run folder, an image folder or an ADM .npz (or an ADM
  reference's mu/sigma), checked up front and read in batches (`open_images`, `ImageSet`).
* `inception`: the feature network, NVIDIA's TorchScript Inception-v3 from a local file
  (`load_inception`, `FeatureNetwork`).
* `metrics`: FID and Inception Score through torchmetrics, and the k-NN precision/recall of
  Kynkaanniemi et al. (`evaluate`).
* `export`: images -> an ADM batch .npz (`export_adm`).

Import from the modules (``from nag_engine.evaluation.metrics import evaluate``): this package
imports nothing itself, so that the command line does not load torchmetrics (seconds) unless it
evaluates.
"""
