"""What leaves mlops for other tools: the MLflow mirror, the HTML report."""
