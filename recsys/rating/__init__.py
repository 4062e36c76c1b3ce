"""Rating prediction: the chapter's cost, RMSE and MAE, and the baselines a rating model is compared with."""
