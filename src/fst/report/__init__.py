"""The experiment's report: the summary of every run (summary), the paper's questions answered from it
(analysis), its figures (figures) and Markdown page (markdown), put together by build."""
