"""What every weight-rewriting pass shares: weight selection (`sites`), codes and their
packing (`codes`), emission into onnxruntime formats (`emit`), quality against the original
(`quality`), the plan section (`section`) and the pass base (`base`)."""
