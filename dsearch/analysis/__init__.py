"""What a study says: Pareto maths (numpy), plotly figures, the paper's points, the front report, export/load_model."""
