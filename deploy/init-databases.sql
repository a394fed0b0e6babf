-- The second database team mode uses: Optuna's studies (L2LAB_STORAGE=postgresql+psycopg2://…/optuna).
CREATE DATABASE optuna;
