"""Open analyses of the live data: any PISA statistic of any target, by any breakdown, for any countries, with
differences and their significance (docs/analysis.md).

- `request`: what an analysis is (`AnalysisSpec`), parsed and checked from the API's query parameters.
- `data`: one country's students, as the arrays an analysis needs, read from the warehouse.
- `engine`: estimates and differences with their standard errors, by the OECD's method (METHODS.md).
"""
