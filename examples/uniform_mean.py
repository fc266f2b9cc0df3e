"""A custom aggregation rule: every client's update counts the same, whatever its example count.

    python -m server --aggregation examples.uniform_mean:UniformMean ...
"""

from fedtl.api import Accumulator, Aggregate, Aggregator, Rule


class UniformMean(Rule):
    name = "uniform-mean"

    def open(self, template, context):
        return UniformAggregator(template)


class UniformAggregator(Aggregator):
    def __init__(self, template):
        self.sums = Accumulator(template)  # a streaming float64 sum: one update in memory at a time

    def add(self, client, update, weight):
        self.sums.add(update.tensors, 1.0, update.support)  # weight 1: ignore the example count

    def result(self):
        return Aggregate(self.sums.mean(), self.sums.total_weight, self.sums.count)

    @property
    def count(self):
        return self.sums.count
