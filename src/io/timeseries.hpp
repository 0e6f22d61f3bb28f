// sparsa: time-series CSV input and its tokenisation (spec section 1).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/config.hpp"
#include "core/record.hpp"

namespace sparsa {

struct CsvOptions {
  std::string time_column;           // "" = first of timestamp, date, time (exact, then any case)
  std::vector<std::string> columns;  // "" = all other columns (minus id column) in file order
  std::string id_column;             // "" = the whole file is one record
};

// One raw record before tokenisation: values[c][t], NaN marks a missing value.
struct RawSeries {
  std::string name;
  StringColumn timestamps;
  std::vector<std::vector<double>> values;  // [channels][rows]
  std::vector<int64_t> source_rows;         // 1-based line number in the file of each row
  std::vector<std::string> channel_names;   // header names, for messages; may be empty
  std::string time_name;                    // the time column's header text
  // Where the default rule took the time column among several named like one ("Date,time,close":
  // 'time', an exact name before a case-insensitive one): the others; else empty.
  std::vector<std::string> time_others;
  // --id-column: blanks around unquoted cells are dropped, so ' AAPL' and 'AAPL' are one record;
  // where its rows' id cells differ so (with blanks and without), the first such row's line and
  // the line of the record's first row (0: none).
  int64_t id_blanks_line = 0, id_first_line = 0;
};

// Whether a record's time goes backwards. Rows are embedded in file order (spec 1), so a
// newest-first file is read backwards: worth a warning. Judged where every timestamp is one of
// the forms this check reads: ISO-8601-like (year first, digits and - : . T Z + and spaces, of
// one length, digits in the same places and one UTC offset, so that text order is time order,
// 'T' and ' ' taken alike; one offset in two lengths, as UTC instants;
// a year-first date without its zeros by year, month and day; where the offset changes, as UTC
// instants if every row carries its offset), a plain number (epoch seconds, compared as
// numbers, whole ones exactly), or a date with the year last (12/31/2019, 31.01.2024; by year,
// and by month and day where a field above 12 shows which is the day, then the time of day).
struct TimeOrder {
  int64_t backwards = -1;  // the first row that sorts before the row above it; -1: none
  // Not judged: the first row whose timestamp breaks the form of the first row's (0: the first
  // row's is none this check reads); -1 where judged, or where the column is a time of day
  // alone or crosses a change of UTC offset with a row that lacks one (not worth a warning).
  int64_t unread = -1;
};
TimeOrder time_order(const StringColumn& timestamps);

// Rows whose timestamp is the same text as the row before (a date-only time column of intraday
// data, say): the first such row's index (-1: none) and how many there are.
struct RepeatedTimes {
  int64_t first = -1, count = 0;
};
RepeatedTimes repeated_times(const StringColumn& timestamps);

// Reads a CSV with a header row. Records: one per file (named after the file's base name
// without extension) or, with id_column, one per distinct id value in order of first appearance.
// Missing values: empty cell, NA, NaN. Throws InputError naming the file, line and column for: no
// header, unknown/duplicate columns, non-numeric cells, ragged rows, empty records, a channel
// count that does not match `expected_channels` (when > 0).
std::vector<RawSeries> read_timeseries_csv(const std::string& path, const CsvOptions& opts,
                                           int64_t expected_channels);

// Per-channel transform (level / log_return / diff) of one channel; missing stays NaN, and so does
// a log_return across a zero or a change of sign (check_series and tokenize_series refuse those
// with an InputError before calling this).
std::vector<double> ts_transform(const std::vector<double>& x, TsTransform t);
// s_c = mean |r| over non-missing values (1 where that is 0 or there are none).
double ts_scale(const std::vector<double>& r);
// bin = clamp(floor((z + C) / (2C) * B), 0, B-1); token = 3 + bin; NaN -> 2 (MISSING).
int32_t ts_token(double z, int64_t bins, double clip);

// A channel as messages name it: "column 'close'", or "channel 2" when the header gave no name.
std::string channel_label(const RawSeries& raw, int64_t c);

// The checks tokenize_series makes, without tokenising (a run reads its CSVs before it starts,
// so that a bad value stops it before any record is embedded): the channel count, log_return's
// pairs (nonzero, of one sign), finite transforms and scales. Throws InputError naming the file,
// the record, the line and the column.
void check_series(const RawSeries& raw, const ModelConfig& config, const std::string& path);

// Tokenises a raw series with the model config into a Record (n_channels = config.channels,
// token-major), source = path. Statistics cover the whole record.
// `raw` by value: a caller done with it moves it in, and its timestamps move into the record.
Record tokenize_series(RawSeries raw, const ModelConfig& config, const std::string& path);

}  // namespace sparsa
