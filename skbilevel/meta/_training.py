"""Meta-training loops: bilevel (hyper-representation) and joint (classical)."""

import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from .._search._progress import tqdm
from ..datasets._episodes import draw_episodes
from ._heads import episode_hypergradient, head_logits, train_heads


def episode_labels(n_way, n_per_class, n_episodes, device):
    """Class-major episode labels, as laid out by :func:`draw_episodes`."""
    labels = torch.arange(n_way, device=device).repeat_interleave(n_per_class)
    return labels.expand(n_episodes, -1)


def checkpoint_line(record):
    """One line of a ``history_`` checkpoint, for ``verbose=2``."""
    line = (
        f"[HyperRepresentationClassifier] step {record['iteration']}: training "
        f"loss {record['outer_loss']:.4g}, learning rate "
        f"{record['learning_rate']:.4g}"
    )
    if "validation_score" in record:
        line += f", validation accuracy {record['validation_score']:.4f}"
    return f"{line}, {record['time']:.1f}s"


def batched_features(network, X, index, device, dtype, batch_size):
    """``network(X[index])`` in eval mode, batch by batch, without a graph."""
    network.eval()
    flat = np.asarray(index).reshape(-1)
    parts = []
    with torch.no_grad():
        for start in range(0, flat.shape[0], batch_size):
            batch = torch.as_tensor(X[flat[start : start + batch_size]])
            parts.append(network(batch.to(device=device, dtype=dtype)))
    return torch.cat(parts).reshape(*np.shape(index), -1)


def set_features(network, images):
    """Features ``(E, N, D)`` of ``E`` sets of images, each set one batch.

    With batch statistics (``batch_norm="episode"``) every set is normalized
    on its own. On a GPU, ``torch.vmap`` runs the sets as one computation; on
    the CPU a loop over the sets is faster (measured: 2x on conv4).
    """
    if images.device.type == "cpu":
        return torch.stack([network(batch) for batch in images])
    return torch.vmap(network, randomness="different")(images)


def episode_embedding(
    network, X, support, query, device, dtype, batch_norm, batch_size
):
    """A map from episode rows of ``support``/``query`` indices to features.

    With ``batch_norm="running"`` the features of every sample used are
    computed once; with ``"episode"`` each support set and each query set is
    embedded as one batch, so that batch norm uses its statistics.
    """
    if batch_norm == "episode":
        network.eval()

        def embed(index):
            images = torch.as_tensor(X[index]).to(device=device, dtype=dtype)
            with torch.no_grad():
                return set_features(network, images)

        return support, query, embed
    index = np.concatenate([support, query], axis=1)
    flat, inverse = np.unique(index, return_inverse=True)
    features = batched_features(network, X, flat, device, dtype, batch_size)
    inverse = inverse.reshape(index.shape)
    n_sup = support.shape[1]

    def lookup(rows):
        return features[torch.as_tensor(rows, device=device)]

    return inverse[:, :n_sup], inverse[:, n_sup:], lookup


def episode_accuracies(embedding, n_way, head_options):
    """Query accuracy of each episode.

    ``embedding`` is ``(support, query, embed)`` as returned by
    :func:`episode_embedding`; heads are trained in chunks of 64 episodes.
    """
    support, query, embed = embedding
    n_shot = support.shape[1] // n_way
    n_query = query.shape[1] // n_way
    scores = []
    for start in range(0, support.shape[0], 64):
        sup = embed(support[start : start + 64])
        qry = embed(query[start : start + 64])
        y_sup = episode_labels(n_way, n_shot, sup.shape[0], sup.device)
        y_qry = episode_labels(n_way, n_query, sup.shape[0], sup.device)
        head = train_heads(sup, y_sup, n_way, **head_options)
        predicted = head_logits(head, qry).argmax(-1)
        scores.append((predicted == y_qry).double().mean(1).cpu().numpy())
    return np.concatenate(scores)


class MetaTrainer:
    """State of one meta-training run: network, outer optimizer, episodes.

    ``run`` iterates outer steps until ``max_iter``, ``max_time`` or early
    stopping, keeping the history and the best validated state.
    """

    def __init__(self, estimator, network, X, pools, validation, rng, device, dtype):
        self.est, self.network, self.pools = estimator, network, pools
        # The training images move to the device once, not at every step.
        self.X = torch.as_tensor(X).to(device=device, dtype=dtype)
        self.validation, self.rng = validation, rng
        self.device, self.dtype = device, dtype
        self.log_lr = torch.tensor(
            math.log(estimator.learning_rate), device=device, dtype=dtype
        )
        params = list(network.parameters())
        if estimator.training == "joint":
            n_features = estimator.n_features_out_
            # A linear softmax layer trains fine from zero; skipping the
            # random init keeps the global torch RNG out of fit.
            self.joint_head = torch.nn.utils.skip_init(
                torch.nn.Linear, n_features, len(pools), device=device, dtype=dtype
            )
            torch.nn.init.zeros_(self.joint_head.weight)
            torch.nn.init.zeros_(self.joint_head.bias)
            params += list(self.joint_head.parameters())
        elif estimator.learn_learning_rate:
            self.log_lr.requires_grad_()
            params.append(self.log_lr)
        self.optimizer = torch.optim.Adam(params, lr=estimator.outer_learning_rate)
        decay = estimator.outer_lr_decay
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda k: 1.0 / (1.0 + decay * k)
        )
        self.alpha = torch.tensor(estimator.alpha, device=device, dtype=dtype)

    def _gather(self, index):
        return self.X[torch.as_tensor(index.reshape(-1), device=self.device)]

    def bilevel_step(self):
        est = self.est
        support, query = draw_episodes(
            self.pools,
            est.n_way_,
            est.n_shot,
            est.n_query_,
            est.meta_batch_size,
            self.rng,
        )
        index = np.concatenate([support, query], axis=1)
        self.network.train()
        if est.batch_norm == "episode":
            images = self._gather(index).reshape(*index.shape, *self.X.shape[1:])
            n_sup = support.shape[1]
            features = torch.cat(
                [
                    set_features(self.network, images[:, :n_sup]),
                    set_features(self.network, images[:, n_sup:]),
                ],
                dim=1,
            )
        else:
            features = self.network(self._gather(index)).reshape(*index.shape, -1)
        y_sup = episode_labels(est.n_way_, est.n_shot, index.shape[0], self.device)
        y_qry = episode_labels(est.n_way_, est.n_query_, index.shape[0], self.device)
        loss, grad = episode_hypergradient(
            features,
            self.log_lr,
            y_sup,
            y_qry,
            est.T,
            self.alpha,
            est.hypergradient,
            est.inner_tol,
        )
        self.optimizer.zero_grad()
        features.backward(grad["features"])
        if self.log_lr.requires_grad:
            self.log_lr.grad = grad["log_lr"]
        return float(loss)

    def joint_step(self):
        est = self.est
        size = est.meta_batch_size * est.n_way_ * (est.n_shot + est.n_query_)
        classes = self.rng.randint(len(self.pools), size=size)
        sizes = (self.pools[classes] >= 0).sum(1)
        position = (self.rng.random_sample(size) * sizes).astype(np.intp)
        index = self.pools[classes, position]
        self.network.train()
        logits = self.joint_head(self.network(self._gather(index)))
        loss = F.cross_entropy(logits, torch.as_tensor(classes, device=self.device))
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"The training loss is {float(loss.detach())}: joint training "
                "diverged. Lower outer_learning_rate."
            )
        self.optimizer.zero_grad()
        loss.backward()
        return float(loss.detach())

    def validate(self):
        X_val, support, query, n_way = self.validation
        est = self.est
        embedding = episode_embedding(
            self.network,
            X_val,
            support,
            query,
            self.device,
            self.dtype,
            est.batch_norm,
            est.batch_size,
        )
        return float(episode_accuracies(embedding, n_way, self.head_options()).mean())

    def head_options(self):
        return {
            "T": self.est.T,
            "learning_rate": float(self.log_lr.detach().exp()),
            "alpha": self.est.alpha,
            "chunk_size": self.est.batch_size,
        }

    def _checkpoint(self, iteration, start, losses):
        record = {
            "iteration": iteration,
            "time": time.perf_counter() - start,
            "outer_loss": float(np.mean(losses)) if losses else float("nan"),
            "learning_rate": float(self.log_lr.detach().exp()),
        }
        if self.validation is not None:
            record["validation_score"] = self.validate()
        return record

    def run(self):
        """Meta-train; return the history and the number of outer steps."""
        est = self.est
        step = self.bilevel_step if est.training == "bilevel" else self.joint_step
        start, history, losses = time.perf_counter(), [], []
        best_score, best_state, n_bad = -np.inf, None, 0
        iteration = 0
        progress = tqdm(total=est.max_iter, disable=not est.verbose, desc="meta-fit")
        for iteration in range(1, est.max_iter + 1):
            losses.append(step())
            self.optimizer.step()
            self.schedule.step()
            progress.update()
            out_of_time = (
                est.max_time is not None and time.perf_counter() - start > est.max_time
            )
            if not (
                iteration % est.validation_interval == 0
                or iteration == est.max_iter
                or out_of_time
            ):
                continue
            history.append(self._checkpoint(iteration, start, losses))
            progress.set_postfix(
                {k: round(v, 4) for k, v in history[-1].items() if k != "iteration"}
            )
            if est.verbose > 1:
                progress.write(checkpoint_line(history[-1]))
            losses = []
            score = history[-1].get("validation_score")
            if score is not None and score > best_score + est.tol:
                best_score, n_bad = score, 0
                best_state = self._state()
            elif score is not None:
                n_bad += 1
            if out_of_time or (est.early_stopping and n_bad >= est.n_iter_no_change):
                break
        progress.close()
        if est.early_stopping and best_state is not None:
            self._restore(best_state)
        return history, iteration

    def _state(self):
        return (
            {k: v.detach().clone() for k, v in self.network.state_dict().items()},
            self.log_lr.detach().clone(),
        )

    def _restore(self, state):
        self.network.load_state_dict(state[0])
        with torch.no_grad():
            self.log_lr.copy_(state[1])
