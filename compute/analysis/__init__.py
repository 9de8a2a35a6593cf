"""Numbers over a whole run, from its predictions and embeddings: metrics, twins, the 2-D projection,
data quality and error clusters. numpy / scikit-learn, no network passes."""
