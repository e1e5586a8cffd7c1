"""One epoch of the paper's model with a chosen W[i, j] init std and TrainConfig overrides; prints one JSON line."""
import json, sys, time
import torch
from capsnet import TrainConfig, Trainer
name, std, overrides = sys.argv[1], float(sys.argv[2]), json.loads(sys.argv[3])
config = TrainConfig(**{"epochs": 1, "progress": False, "device": "cuda", "precision": "32", **overrides})
trainer = Trainer(config)
if std > 0:
    torch.manual_seed(config.seed + 12345)
    with torch.no_grad():
        trainer.model.digits.weight.normal_(0, std)
start = time.time()
m = trainer.fit()[-1]
print(json.dumps({"name": name, "std": std, **overrides, "test_error": m["test_error"],
                  "train_accuracy": m["train_accuracy"], "seconds": round(time.time() - start, 1)}))
