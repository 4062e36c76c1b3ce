"""The chapter's network written plainly in PyTorch: the reference the trainer is measured against.

Same sizes, same padded inputs, same loss and optimizer (SGD lr 0.2, sparse embedding gradients);
the text-CNN is a Conv1d (kernel 3, padding 1) over the padded title with the padding positions masked.
"""

from __future__ import annotations

import torch
from torch import nn


class TorchRecommender(nn.Module):
    def __init__(self, n_users, n_ages, n_jobs, n_movies, n_categories, n_title_words, sparse=True):
        super().__init__()
        e = lambda n, d, pad=None: nn.Embedding(n, d, padding_idx=pad, sparse=sparse)  # noqa: E731
        self.user_emb, self.user_fc = e(n_users, 32), nn.Linear(32, 32)
        self.gender_emb, self.gender_fc = e(2, 16), nn.Linear(16, 16)
        self.age_emb, self.age_fc = e(n_ages, 16), nn.Linear(16, 16)
        self.job_emb, self.job_fc = e(n_jobs, 16), nn.Linear(16, 16)
        self.user_out = nn.Linear(80, 200)
        self.movie_emb, self.movie_fc = e(n_movies, 32), nn.Linear(32, 32)
        self.category_emb = e(n_categories + 1, 32, n_categories)
        self.title_emb = e(n_title_words + 1, 32, n_title_words)
        self.title_pad = n_title_words
        self.conv = nn.Conv1d(32, 32, kernel_size=3, padding=1)
        self.movie_out = nn.Linear(96, 200)

    def forward(self, user_id, gender_id, age_id, job_id, movie_id, category_id, movie_title):
        user = torch.cat(
            [
                self.user_fc(self.user_emb(user_id)),
                self.gender_fc(self.gender_emb(gender_id)),
                self.age_fc(self.age_emb(age_id)),
                self.job_fc(self.job_emb(job_id)),
            ],
            dim=1,
        )
        user = torch.tanh(self.user_out(user))
        mask = (movie_title != self.title_pad).float()
        conv = torch.tanh(self.conv(self.title_emb(movie_title).transpose(1, 2)))  # [N, 32, L]
        title = (conv * mask.unsqueeze(1)).sum(dim=2)
        movie = torch.cat([self.movie_fc(self.movie_emb(movie_id)), self.category_emb(category_id).sum(1), title], 1)
        movie = torch.tanh(self.movie_out(movie))
        return 5 * nn.functional.cosine_similarity(user, movie, dim=1).unsqueeze(1)


def make_step(sizes: dict, lr: float = 0.2, sparse: bool = True):
    """A train-step function over numpy feeds (the chapter's feed order) and labels; returns the loss."""
    torch.manual_seed(0)
    net = TorchRecommender(**sizes, sparse=sparse)
    opt = torch.optim.SGD(net.parameters(), lr=lr)

    def step(feeds: list, label) -> float:
        x = [torch.from_numpy(f) for f in feeds]
        loss = ((net(*x) - torch.from_numpy(label)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss)

    return step
