"""The bundle: the contract between the trainer (`model/`) and the service (`service/`).

A bundle is one folder with a TorchScript encoder per modality and a `manifest.json`. This
package holds its format (typed manifest, one class per input kind, digests, reading and
writing), and the preparation of raw inputs that trainer and service must do identically
(pixels, clip sampling, tokenising). It imports nothing else of ours.
"""
