"""The explanation methods (CAM, Grad-CAM, Grad-CAM++, Score-CAM) and every measurement of a map:
faithfulness, ROAD, trivial baselines, the sanity check and localisation against ground truth."""
