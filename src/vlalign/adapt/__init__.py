"""Adapting trained runs without retraining them from scratch (issue 13): weight merging and instruction
residuals (``merging``), CoOp prompt learning (``prompt_learning``) and PCB's class-balanced active
selection of the samples to label (``active_selection``)."""
