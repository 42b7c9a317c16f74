"""Inference with a fine-tuned model: sliding-window segmentation mapped back to the original grid,
classification, predictions for any files, and the evaluation of a split."""
