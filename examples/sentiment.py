"""Sentiment of short movie reviews with Embedding(mask_zero=True) + LSTM.

The data is SYNTHETIC: the script writes its own labelled reviews from templates (no
real reviews, nothing downloaded), so the task is known exactly and the numbers below
say what the model learns, not how it would do on real text. How a review is built:

* A *clause* is ``<subject> <verb> [not|never] [intensifier] <adjective>``, e.g.
  "the acting was not very good". Its polarity is the adjective's (10 positive and 10
  negative adjectives), flipped when the clause is negated: "not good" is negative,
  "never boring" is positive.
* A review of label L (1 positive, 0 negative) is either 1-3 clauses of polarity L, or
  (30% of reviews) a *contrast* between a main clause M of polarity L and a conceded
  clause C of the other polarity, in one of three forms: "C but M", "although C , M" or
  "M , although C". So the clause after "but" decides, and the one without "although".
* 0-3 neutral filler clauses are put at random places, some containing "not" or
  "never" that negate nothing ("my friend did not come", "i had never seen the trailer").
* Clauses are joined with "and" or "." into reviews of 4-47 words (about 20 on average);
  the labels are drawn with equal probability.

So the same words occur in both classes and mostly their order tells the label: which
adjective a "not" stands before, and which clause "but" or "although" goes with. Words
are numbered from 1 (0 is the padding), the reviews are right-padded with
``pad_sequences(padding='post')``, and ``Embedding(mask_zero=True)`` makes the LSTM skip
the padding.

Model: ``Embedding(vocab, 16, mask_zero=True) -> LSTM(32) -> Dense(1, sigmoid)``, binary
crossentropy, Adam. Baselines: the majority class, and (when scikit-learn is installed)
a logistic regression on word counts, which sees the words but not their order. The
held-out reviews are passed to fit as validation data for the curves only (nothing is
tuned or stopped on them).

    python examples/sentiment.py                         # about 6 seconds
    python examples/sentiment.py --plot sentiment.png

Measured on 2026-11-26 on a shared 2-core Intel Xeon VM (AVX-512 path), default options
(seed 0: 4000 training and 1000 test reviews, 10 epochs, 3.2 s of training, 6 s for the
whole script): test accuracy 100.0% (1000 of 1000; also 100% with seeds 1 and 2),
against 50.6% for the majority class and 56.4% for the bag-of-words logistic regression.
The task is easy for an LSTM by design; the point is that it needs the word order.
"""

import argparse
import os
import time

import numpy as np

from fastlstm import optimizers, utils
from fastlstm.layers import LSTM, Dense, Embedding, Input
from fastlstm.models import Sequential

SUBJECTS = ["the movie", "the film", "the plot", "the acting", "the story", "the ending",
            "the cast", "the script", "the dialogue", "the soundtrack", "the pacing",
            "the direction", "the effects", "this sequel", "the lead actor"]
VERBS = ["was", "is", "felt", "seemed", "looked"]
NEGATIONS = ["not", "never"]
INTENSIFIERS = ["really", "very", "truly", "quite", "so", "rather"]
POSITIVE = ["good", "great", "excellent", "wonderful", "brilliant", "enjoyable", "moving",
            "funny", "clever", "beautiful"]
NEGATIVE = ["bad", "terrible", "awful", "boring", "dull", "weak", "poor", "predictable",
            "clumsy", "forgettable"]
FILLERS = ["i watched it on a sunday", "my friend did not come with me",
           "we saw it in the evening", "i had never seen the trailer",
           "it is about two hours long", "the theater was not full",
           "i went with my family", "it came out last year", "i did not read the book",
           "we bought popcorn", "it was raining outside", "the tickets were cheap"]


def make_clause(rng, polarity):
    """A clause whose sentiment is ``polarity`` (1 positive, 0 negative)."""
    negated = rng.random() < 0.4
    adjective_positive = polarity if not negated else 1 - polarity
    words = [SUBJECTS[rng.integers(len(SUBJECTS))], VERBS[rng.integers(len(VERBS))]]
    if negated:
        words.append(NEGATIONS[rng.integers(len(NEGATIONS))])
    if rng.random() < 0.4:
        words.append(INTENSIFIERS[rng.integers(len(INTENSIFIERS))])
    pool = POSITIVE if adjective_positive else NEGATIVE
    words.append(pool[rng.integers(len(pool))])
    return " ".join(words)


def make_review(rng, label):
    if rng.random() < 0.3:
        # a contrast: the clause of the review's polarity is the main one, the other the
        # conceded one; where each stands depends on the connective
        main, other = make_clause(rng, label), make_clause(rng, 1 - label)
        form = rng.integers(3)
        if form == 0:
            parts = [f"{other} but {main}"]
        elif form == 1:
            parts = [f"although {other} , {main}"]
        else:
            parts = [f"{main} , although {other}"]
    else:
        parts = [make_clause(rng, label) for _ in range(rng.integers(1, 4))]
    for _ in range(rng.integers(0, 4)):
        parts.insert(rng.integers(0, len(parts) + 1), FILLERS[rng.integers(len(FILLERS))])
    text = parts[0]
    for part in parts[1:]:
        text += (" and " if rng.random() < 0.5 else " . ") + part
    return text


def make_reviews(n, rng):
    """n reviews (strings) and their labels (int array), balanced in expectation."""
    labels = rng.integers(0, 2, size=n)
    return [make_review(rng, int(label)) for label in labels], labels


def build_vocabulary():
    """word -> id, ids from 1 (0 is the padding); every word the templates can use."""
    words = set()
    for phrase in SUBJECTS + VERBS + NEGATIONS + INTENSIFIERS + POSITIVE + NEGATIVE + \
            FILLERS + ["but", "although", ",", "and", "."]:
        words.update(phrase.split())
    return {w: i + 1 for i, w in enumerate(sorted(words))}


def encode(texts, vocabulary, maxlen):
    return utils.pad_sequences([[vocabulary[w] for w in t.split()] for t in texts],
                               maxlen=maxlen, padding="post", truncating="post")


def bag_of_words_accuracy(x_train, y_train, x_test, y_test, vocab_size):
    """Accuracy of a logistic regression on word counts (None without scikit-learn)."""
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        return None

    def counts(x):
        c = np.zeros((len(x), vocab_size + 1))
        np.add.at(c, (np.repeat(np.arange(len(x)), x.shape[1]), x.ravel()), 1.0)
        return c[:, 1:]                                       # drop the padding column

    clf = LogisticRegression(C=10.0, max_iter=5000)
    clf.fit(counts(x_train), y_train)
    return float(clf.score(counts(x_test), y_test))


def build_model(vocab_size, embed_dim, units, learning_rate):
    model = Sequential([Input((None,)),
                        Embedding(vocab_size + 1, embed_dim, mask_zero=True),
                        LSTM(units), Dense(1, activation="sigmoid")])
    model.compile(optimizer=optimizers.Adam(learning_rate), loss="binary_crossentropy",
                  metrics=["accuracy"])
    return model


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--train-size", type=int, default=4000, help="training reviews")
    p.add_argument("--test-size", type=int, default=1000, help="held-out reviews")
    p.add_argument("--maxlen", type=int, default=50, help="reviews are padded to this")
    p.add_argument("--embed-dim", type=int, default=16)
    p.add_argument("--units", type=int, default=32, help="LSTM units")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=0.005)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="a tiny run (few reviews, 2 epochs) to check that it works")
    p.add_argument("--plot", metavar="PATH", help="save the training curves as a PNG")
    p.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2),
                   help="fit's verbosity (2: one line per epoch)")
    args = p.parse_args(argv)
    # counts must be at least 1 (--epochs 0 ended in a KeyError once the data had loaded)
    for name in ("epochs", "train_size", "test_size", "maxlen", "embed_dim", "units", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: expected a number >= 1, "
                    f"got {getattr(args, name)}")
    if args.plot and not os.path.isdir(os.path.dirname(os.path.abspath(args.plot))):
        p.error(f"--plot: cannot write {args.plot!r}: no such folder")  # now, not after training
    if args.quick:
        args.epochs, args.train_size, args.test_size = min(args.epochs, 2), 200, 100
    return args


def main(argv=None):
    args = parse_args(argv)
    utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    vocabulary = build_vocabulary()
    train_texts, y_train = make_reviews(args.train_size, rng)
    test_texts, y_test = make_reviews(args.test_size, rng)
    x_train = encode(train_texts, vocabulary, args.maxlen)
    x_test = encode(test_texts, vocabulary, args.maxlen)

    model = build_model(len(vocabulary), args.embed_dim, args.units, args.learning_rate)
    start = time.perf_counter()
    history = model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                        validation_data=(x_test, y_test), verbose=args.verbose)
    seconds = time.perf_counter() - start

    loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
    majority = float(np.mean(y_test == int(np.mean(y_train) >= 0.5)))
    bow = bag_of_words_accuracy(x_train, y_train, x_test, y_test, len(vocabulary))
    results = {"accuracy": float(accuracy), "loss": float(loss),
               "majority_accuracy": majority, "bow_accuracy": bow, "train_seconds": seconds}

    lengths = (x_train != 0).sum(axis=1)
    print(f"Synthetic reviews: {len(x_train)} for training, {len(x_test)} held out; "
          f"vocabulary {len(vocabulary)} words; {lengths.min()}-{lengths.max()} words "
          f"(mean {lengths.mean():.1f})")
    print(f"Trained {args.epochs} epochs in {seconds:.1f} s")
    print(f"  LSTM test accuracy          {accuracy:.1%}")
    print(f"  majority class              {majority:.1%}")
    if bow is not None:
        print(f"  bag-of-words logistic reg.  {bow:.1%} (sees the words, not their order)")
    probes = ["the movie was good", "the movie was not good", "the movie was bad",
              "the movie was not bad", "the plot was never boring",
              "the acting was great but the ending was terrible",
              "the acting was terrible but the ending was great",
              "the ending was great , although the acting was terrible",
              "although the ending was great , the acting was terrible",
              "my friend did not come with me and the story was really moving"]
    p = model.predict(encode(probes, vocabulary, args.maxlen), verbose=0)[:, 0]
    print("  P(positive) for a few reviews:")
    for text, prob in zip(probes, p):
        print(f"    {prob:5.3f}  {text}")

    if args.plot:
        history.plot(keys=["loss", "accuracy"], filename=args.plot,
                     title="Embedding + LSTM on synthetic reviews (val = held-out set)")
        print(f"Saved the figure to {args.plot}")
    results["probes"] = dict(zip(probes, (float(v) for v in p)))
    return results


if __name__ == "__main__":
    main()
