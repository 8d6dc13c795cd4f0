-- The MLflow server's backend store, beside the eldefect database (first start of the volume).
CREATE DATABASE mlflow OWNER eldefect;
