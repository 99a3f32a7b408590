"""`adaptext rank MODEL --queries Q --items I --top K --output OUT`: the K best items for every query."""

from __future__ import annotations

import argparse

from adaptext.cli.options import add_overwrite_option


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "rank",
        help="score every (query, item) pair with a pair model and keep the top K items per query",
        description="Pairs each query with every item (query first, item second, as trained with "
        "data.text_pair_column), scores the pairs in batches and writes query_id, item_id, score, rank (1 = best) "
        "for the K best items of each query. See docs/ranking.md.",
    )
    p.add_argument("model", help="run folder or model folder of a pair model (binary, graded or regression)")
    p.add_argument("--queries", required=True, help="CSV/TSV/JSONL/Parquet file of queries (id and text columns)")
    p.add_argument("--items", required=True, help="CSV/TSV/JSONL/Parquet file of items (id and text columns)")
    p.add_argument("--top", type=int, default=10, help="items kept per query (default 10)")
    p.add_argument("--output", required=True, help="output .csv, .tsv, .jsonl or .parquet file")
    add_overwrite_option(p, "an existing --output file (never an input)")
    p.add_argument("--query-id-column", default="query_id", help="id column of --queries (default query_id)")
    p.add_argument("--query-text-column", default="text", help="text column of --queries (default text)")
    p.add_argument("--item-id-column", default="item_id", help="id column of --items (default item_id)")
    p.add_argument("--item-text-column", default="text", help="text column of --items (default text)")
    p.add_argument("--positive", help="the label whose probability is a pair's score (default: see docs/ranking.md)")
    p.add_argument("--batch-size", type=int, default=64, help="pairs per forward pass (default 64)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adaptext.apps.rank import RankColumns, rank_items
    from adaptext.core.errors import AdaptextError
    from adaptext.core.outputs import check_output_file, expand
    from adaptext.inference.predictor import Predictor

    if args.top < 1 or args.batch_size < 1:
        raise AdaptextError(f"--top and --batch-size must be at least 1, got {args.top} and {args.batch_size}")
    # Before the model is loaded.
    check_output_file(args.output, overwrite=args.overwrite, inputs=[args.queries, args.items])
    predictor = Predictor.from_dir(expand(args.model), batch_size=args.batch_size)
    columns = RankColumns(args.query_id_column, args.query_text_column, args.item_id_column, args.item_text_column)
    ranking = rank_items(
        predictor,
        args.queries,
        args.items,
        args.output,
        top=args.top,
        columns=columns,
        positive=args.positive,
        overwrite=args.overwrite,
    )
    print(
        f"{ranking.rows} rows ({ranking.top} of {ranking.items} items for each of {ranking.queries} queries, "
        f"scored by {ranking.scored_by}) written to {ranking.output}"
    )
    return 0
