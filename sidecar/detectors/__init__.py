"""Pure statistics (numpy and scipy, no sidecar imports): two-sample tests, multiple-testing correction, MMD,
Mahalanobis and autoencoder outliers, projections, robust statistics, data quality."""
