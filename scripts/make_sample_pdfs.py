"""Generate the two sample PDF reports of the Vellmark corpus.

The report texts are kept here as Python data (title, headings, paragraphs,
simple tables) and rendered with fpdf2 using only the Helvetica core font and
ASCII text, so that text extraction is clean. A fixed creation date keeps the
output byte-for-byte reproducible.

Usage:
    python scripts/make_sample_pdfs.py [OUTPUT_DIR]

OUTPUT_DIR defaults to data/corpus/reports relative to the repository root.
Requires fpdf2 (tested with 2.8.9).
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

from fpdf import FPDF

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "data" / "corpus" / "reports"

# Each report: file stem, title, subtitle lines, fixed creation date, and a list
# of blocks. A block is ("h", text) for a heading, ("p", text) for a paragraph,
# ("li", text) for a bullet item, or ("table", [header, row, row, ...]).

FIELD_FAILURE_Q3_2025 = {
    "stem": "field-failure-analysis-2025-q3",
    "title": "Field Failure Analysis - Q3 2025",
    "subtitle": [
        "Vellmark Thermal Systems AB - Quality department, Reliability Engineering, Hallstrand Works (HW1)",
        "Report QR-FFA-2025-Q3 - issued 20 October 2025 - approved by Quality Director Priya Lindqvist-Otieno",
    ],
    "created": datetime(2025, 10, 20, 9, 0, 0, tzinfo=timezone.utc),
    "blocks": [
        ("h", "1. Summary"),
        (
            "p",
            "This report analyses the confirmed field failures of Vellmark heat pumps in the third quarter of 2025, "
            "from 1 July to 30 September 2025.",
        ),
        (
            "p",
            "In Q3 2025 there were 321 confirmed field failure cases across all four models, "
            "compared with 286 cases in Q2 2025.",
        ),
        (
            "p",
            "The most frequent fault code was E312 (loss of communication between the VCU-3 and the inverter board) "
            "with 84 cases, followed by E205 (low water flow) with 71 cases and E104 (low suction pressure) "
            "with 67 cases.",
        ),
        (
            "p",
            "The AH-14 accounted for 41 of the 67 E104 cases, and these were traced to discharge line cracks "
            "caused by the compressor mount, which is corrected by ECN-0417.",
        ),
        (
            "p",
            "The MTBF of the AH-14 fell from 231,000 hours in Q2 2025 to 192,900 hours in Q3 2025, "
            "while the other three models stayed within 15 percent of their Q2 values.",
        ),
        ("h", "2. Scope and method"),
        (
            "p",
            "A confirmed field failure case is a support case in which Tier 2 or Tier 3 confirmed a product fault "
            "that needed a part replacement, a firmware update or a repair on site. Installation errors are counted "
            "when they produced a fault code, because they drive service cost, but they are marked as such in the "
            "root cause section. Cases closed as user error, power cuts or no fault found are excluded.",
        ),
        (
            "p",
            "The monitored population is all units built from 2021 onwards that were commissioned before 1 July 2025. "
            "Operating hours are taken from the compressor run-hour counters reported by connected VCU-3 controllers "
            "and extrapolated to units that are not connected.",
        ),
        (
            "p",
            "MTBF is calculated as the total fleet operating hours in the quarter divided by the number of confirmed "
            "failure cases in the quarter.",
        ),
        ("h", "3. Failures by fault code and model"),
        (
            "table",
            [
                ["Fault code", "Description", "AH-6", "AH-9", "AH-14", "GC-12", "Total"],
                ["E103", "Discharge temperature too high", "6", "11", "8", "2", "27"],
                ["E104", "Low suction pressure", "9", "14", "41", "3", "67"],
                ["E105", "EEV fault", "5", "7", "4", "2", "18"],
                ["E205", "Low water flow", "22", "31", "12", "6", "71"],
                ["E214", "Low brine pressure (GC-12)", "-", "-", "-", "14", "14"],
                ["E307", "Outdoor fan motor fault", "8", "10", "6", "-", "24"],
                ["E312", "VCU-3 to inverter communication loss", "19", "46", "15", "4", "84"],
                ["E340", "Supply voltage outside range", "4", "6", "5", "1", "16"],
                ["Total", "", "73", "125", "91", "32", "321"],
            ],
        ),
        (
            "p",
            "By fault family, refrigerant circuit codes (E1xx) caused 112 cases, hydraulic circuit codes (E2xx) "
            "caused 85 cases and electrical and communication codes (E3xx) caused 124 cases.",
        ),
        (
            "p",
            "The AH-9 had the highest number of cases (125), but it also has the largest installed base; "
            "per 1,000 units the AH-14 had the highest rate at 3.9 cases.",
        ),
        ("h", "4. Installed base, operating hours and MTBF"),
        (
            "table",
            [
                ["Model", "Units monitored", "Operating hours Q3 (million)", "Cases", "MTBF Q3 (h)", "MTBF Q2 (h)"],
                ["AH-6", "58,400", "37.4", "73", "512,000", "498,000"],
                ["AH-9", "77,300", "53.3", "125", "426,700", "441,000"],
                ["AH-14", "23,100", "17.6", "91", "192,900", "231,000"],
                ["GC-12", "15,600", "12.8", "32", "399,800", "455,000"],
            ],
        ),
        (
            "p",
            "The GC-12 MTBF fell to 399,800 hours mainly because of the 14 E214 low brine pressure cases, "
            "which came from one supplier batch of brine pressure switches.",
        ),
        (
            "p",
            "Average operating hours per unit in the quarter were 640 hours for the AH-6, 690 hours for the AH-9, "
            "760 hours for the AH-14 and 820 hours for the GC-12.",
        ),
        ("h", "5. Root causes"),
        (
            "p",
            "5.1 E104 on the AH-14. Returned parts analysed at KW3 showed fatigue cracks in the brazed joint of the "
            "discharge line close to the compressor. The 8D investigation found that the compressor mount VT-20171, "
            "combined with the shorter discharge line routing used since June 2024, placed a resonance at 39 Hz "
            "inside the normal compressor speed range. All 41 AH-14 cases were in the serial number range covered "
            "by ECN-0417.",
        ),
        (
            "p",
            "5.2 E312 on all models. Analysis of VCU-3 logs showed that firmware 4.1 had a timing error on the "
            "internal bus between the VCU-3 and the inverter board at high compressor speed, which caused spurious "
            "communication losses (defect VCU-1547). Firmware 4.2 with inverter firmware INV 2.7 corrects the timing "
            "and allows three retries before raising E312. Cases fell sharply in units that received firmware 4.2 "
            "in September.",
        ),
        (
            "p",
            "5.3 E205 on all models. In 52 of the 71 cases the cause was a blocked filter ball valve "
            "after commissioning, because the heating system had not been flushed. This is an installation issue, "
            "not a product defect, but it is the largest single source of early-life service visits.",
        ),
        (
            "p",
            "5.4 E214 on the GC-12. Twelve of the 14 cases came from brine pressure switches VT-20361 of one "
            "supplier batch, whose switching point drifted by up to 0.3 bar. The remaining two were genuine brine "
            "leaks in the ground loop.",
        ),
        (
            "p",
            "5.5 Other codes. E103, E105, E307 and E340 showed no trend compared with the previous four quarters "
            "and are monitored without specific action.",
        ),
        ("h", "6. Actions"),
        (
            "table",
            [
                ["No.", "Action", "Owner", "Due date", "Status"],
                [
                    "A1",
                    "Introduce new compressor mount in AH-14 production (ECN-0417)",
                    "Chief Engineer",
                    "2025-09-01",
                    "Done",
                ],
                [
                    "A2",
                    "Retrofit kit VT-20173 on all AH-14 units in the ECN-0417 range",
                    "Tomas Ekdahl-Reyes",
                    "2026-08-31",
                    "Open",
                ],
                [
                    "A3",
                    "Remote update of connected units to VCU-3 firmware 4.2",
                    "Chief Engineer",
                    "2025-11-30",
                    "In progress",
                ],
                [
                    "A4",
                    "Issue TN-2025-09 on flushing and filter cleaning",
                    "Aino Varga-Holm",
                    "2025-11-15",
                    "In progress",
                ],
                [
                    "A5",
                    "Supplier 8D and batch replacement for switch VT-20361",
                    "Priya Lindqvist-Otieno",
                    "2025-11-30",
                    "Open",
                ],
                ["A6", "Review E307 fan motor trend in Q4 report", "Reliability Engineering", "2026-01-20", "Open"],
            ],
        ),
        (
            "p",
            "Action A2 is owned by the Head of Field Service, Tomas Ekdahl-Reyes, with a due date of 31 August 2026.",
        ),
        (
            "p",
            "By 30 September 2025, 1,065 of the affected AH-14 units had already been retrofitted with kit VT-20173.",
        ),
        ("p", "For action A3, 61 percent of connected units had received firmware 4.2 by 15 October 2025."),
        (
            "p",
            "Action A4 is owned by the Training Manager, Aino Varga-Holm, and adds system flushing checks to the "
            "commissioning checklist and the annual service checklist.",
        ),
        ("h", "7. Next report"),
        (
            "p",
            "The Q4 2025 field failure analysis will be issued by 20 January 2026 and will include the first "
            "effectiveness data for ECN-0417 and firmware 4.2.",
        ),
    ],
}

ANNUAL_SERVICE_2025 = {
    "stem": "annual-service-report-2025",
    "title": "Annual Service Report 2025",
    "subtitle": [
        "Vellmark Thermal Systems AB - Field Service organisation (Tier 1, Tier 2 and Tier 3)",
        "Issued 26 January 2026 by the Head of Field Service, Tomas Ekdahl-Reyes",
    ],
    "created": datetime(2026, 1, 26, 9, 0, 0, tzinfo=timezone.utc),
    "blocks": [
        ("h", "1. The service year in brief"),
        (
            "p",
            "In 2025 the Vellmark service organisation handled 41,760 support cases, 6 percent more than "
            "the 39,400 cases handled in 2024.",
        ),
        (
            "p",
            "Tier 1 resolved 71.5 percent of all cases without escalation, Tier 2 resolved 73.3 percent of "
            "the cases it received remotely, and Tier 3 attended 3,170 cases on site.",
        ),
        ("p", "The first-time-fix rate for field visits rose to 88.4 percent in 2025 from 85.9 percent in 2024."),
        (
            "p",
            "The customer satisfaction score (CSAT) reached 4.4 out of 5, up from 4.2 in 2024, "
            "based on 12,950 survey replies.",
        ),
        (
            "p",
            "Service, spare parts and training generated revenue of EUR 57.5 million, 17 percent of company revenue.",
        ),
        ("h", "2. Cases by tier"),
        (
            "table",
            [
                ["Tier", "Cases received", "Resolved at this tier", "Share resolved", "Escalated"],
                ["Tier 1 contact centre (HW1)", "41,760", "29,870", "71.5 %", "11,890"],
                ["Tier 2 remote support (HW1)", "11,890", "8,720", "73.3 %", "3,170"],
                ["Tier 3 field engineering (KW3)", "3,170", "3,170", "100 %", "-"],
            ],
        ),
        (
            "p",
            "By priority, 2,140 cases were P1 (complete loss of heating or a safety concern), 15,230 were P2 "
            "and 24,390 were P3 or P4.",
        ),
        (
            "p",
            "The busiest month was November with 5,310 cases, driven by the first cold spell of the heating season "
            "and by E312 cases before the firmware 4.2 rollout was complete.",
        ),
        (
            "p",
            "By channel, 58 percent of cases were opened by phone, 24 percent by e-mail, 12 percent by chat and "
            "6 percent through the Vellmark Home app.",
        ),
        ("h", "3. Response times"),
        (
            "p",
            "The response time targets for each tier are set in the Escalation Matrix; the table compares the "
            "2025 averages with those of 2024.",
        ),
        (
            "table",
            [
                ["Measure", "2025 average", "2024 average"],
                ["Tier 1 speed of answer (phone)", "48 s", "71 s"],
                ["Tier 1 e-mail first reply", "5.2 business hours", "6.9 business hours"],
                ["Tier 2 first contact, P2 cases", "2.6 business hours", "3.1 business hours"],
                ["Tier 3 time to site, P2 cases", "1.6 business days", "1.9 business days"],
                ["Tier 3 time to site, P1 cases", "19 hours", "22 hours"],
            ],
        ),
        ("p", "The average Tier 1 speed of answer on the phone was 48 seconds in 2025, against 71 seconds in 2024."),
        ("p", "Tier 3 engineers from KW3 reached P1 sites in an average of 19 hours after escalation."),
        (
            "p",
            "The improvement in Tier 1 answer times followed the hiring of 14 additional contact centre agents in "
            "March 2025 and the introduction of guided troubleshooting scripts for the ten most common fault codes.",
        ),
        ("h", "4. Field visits and first-time fix"),
        (
            "p",
            "Vellmark technicians and certified service partners carried out 9,840 fault visits and "
            "27,600 annual service visits in 2025.",
        ),
        (
            "p",
            "A visit counts as a first-time fix when the fault is solved without a second visit within 30 days. "
            "The main reasons for a second visit were a missing part in the van (41 percent of repeat visits), a wrong "
            "initial diagnosis (27 percent) and intermittent faults that did not show during the first visit "
            "(22 percent).",
        ),
        (
            "p",
            "Under ECN-0417, technicians retrofitted 2,380 AH-14 units with the new compressor mount kit VT-20173 "
            "during 2025.",
        ),
        ("h", "5. Spare parts from KW3"),
        ("p", "The Kettlewick Service Hub (KW3) shipped 58,900 order lines in 36,400 shipments in 2025."),
        ("p", "Of the orders received before the 14:00 cut-off, 96.2 percent left KW3 on the same working day."),
        (
            "p",
            "KW3 also received and inspected 4,310 RMA returns, of which 38 percent were confirmed as defective, "
            "44 percent were found to be without fault and 18 percent were returned unused.",
        ),
        (
            "table",
            [
                ["Part number", "Description", "Quantity shipped 2025"],
                ["VT-20173", "AH-14 compressor mount retrofit kit (ECN-0417)", "2,510"],
                ["VT-20526", "Filter ball valve 1 inch", "4,820"],
                ["VT-20311", "Flow sensor, vortex type", "1,930"],
                ["VT-20421", "VCU-3 room display unit", "870"],
                ["VT-20361", "Brine pressure switch, GC-12", "640"],
            ],
        ),
        ("h", "6. Customer satisfaction"),
        ("p", "The CSAT survey is sent by e-mail after each closed case and asks for a rating from 1 to 5."),
        (
            "p",
            "The overall CSAT score was 4.4, with Tier 3 field visits rated highest at 4.6 and Tier 1 e-mail "
            "handling rated lowest at 4.0.",
        ),
        (
            "p",
            "The most common complaints were waiting time for a technician in November and December, "
            "and the need to repeat information when a case was escalated from Tier 1 to Tier 2.",
        ),
        ("h", "7. Goals for 2026"),
        (
            "li",
            "Raise the first-time-fix rate to at least 90 percent by stocking the ten most used parts in every "
            "service van.",
        ),
        ("li", "Raise the Tier 1 resolution rate to 74 percent with new guided troubleshooting for E2xx codes."),
        ("li", "Reach a CSAT score of 4.5 and bring Tier 1 e-mail handling to at least 4.3."),
        ("li", "Cut the average Tier 3 time to site for P1 cases to 16 hours."),
        ("li", "Complete the ECN-0417 retrofit of all affected AH-14 units by 31 August 2026."),
        ("li", "Have VCU-3 firmware 4.2 installed on 95 percent of connected units by 31 March 2026."),
        ("li", "Raise same-day dispatch from KW3 to 97 percent of orders received before the cut-off."),
        (
            "p",
            "Progress against these goals is reviewed monthly by the Head of Field Service and reported to the "
            "executive board every quarter.",
        ),
    ],
}

REPORTS = [FIELD_FAILURE_Q3_2025, ANNUAL_SERVICE_2025]

# Relative column widths for tables whose default equal widths would wrap text,
# keyed by the table's header row.
COL_WIDTHS = {
    ("Fault code", "Description", "AH-6", "AH-9", "AH-14", "GC-12", "Total"): (12, 34, 8, 8, 8, 8, 8),
    ("Model", "Units monitored", "Operating hours Q3 (million)", "Cases", "MTBF Q3 (h)", "MTBF Q2 (h)"): (
        10,
        14,
        24,
        8,
        14,
        14,
    ),
    ("No.", "Action", "Owner", "Due date", "Status"): (6, 50, 22, 12, 12),
    ("Tier", "Cases received", "Resolved at this tier", "Share resolved", "Escalated"): (30, 14, 18, 14, 12),
    ("Measure", "2025 average", "2024 average"): (40, 20, 20),
    ("Part number", "Description", "Quantity shipped 2025"): (14, 40, 18),
}


class ReportPDF(FPDF):
    def __init__(self, footer_text: str) -> None:
        super().__init__(orientation="P", unit="mm", format="A4")
        self.footer_text = footer_text

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font("Helvetica", size=8)
        self.cell(0, 5, f"{self.footer_text} - page {self.page_no()}", align="C")


def _check_ascii(report: dict) -> None:
    texts = [report["title"], *report["subtitle"]]
    for kind, content in report["blocks"]:
        if kind == "table":
            texts.extend(cell for row in content for cell in row)
        else:
            texts.append(content)
    for text in texts:
        if not text.isascii():
            raise ValueError(f"non-ASCII text in {report['stem']}: {text!r}")


def render(report: dict, out_dir: Path) -> Path:
    _check_ascii(report)
    pdf = ReportPDF(footer_text=f"Vellmark Thermal Systems AB - {report['title']}")
    pdf.set_creation_date(report["created"])
    pdf.set_title(report["title"])
    pdf.set_author("Vellmark Thermal Systems AB")
    pdf.set_creator("scripts/make_sample_pdfs.py")
    pdf.set_margins(left=15, top=15, right=15)
    pdf.set_auto_page_break(auto=True, margin=18)
    pdf.add_page()

    pdf.set_font("Helvetica", style="B", size=18)
    pdf.multi_cell(0, 9, report["title"], new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=9)
    for line in report["subtitle"]:
        pdf.multi_cell(0, 5, line, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)

    for kind, content in report["blocks"]:
        if kind in ("p", "li"):
            # Keep each paragraph on one page, so that extracted text is not
            # interrupted by a page footer in the middle of a sentence.
            pdf.set_font("Helvetica", size=10)
            width = pdf.epw - (4 if kind == "li" else 0)
            lines = pdf.multi_cell(width, 5, content, dry_run=True, output="LINES")
            if pdf.get_y() + 5 * len(lines) > pdf.page_break_trigger:
                pdf.add_page()
        if kind == "h":
            # Do not leave a heading alone at the bottom of a page.
            if pdf.get_y() + 30 > pdf.page_break_trigger:
                pdf.add_page()
            pdf.ln(2)
            pdf.set_font("Helvetica", style="B", size=13)
            pdf.multi_cell(0, 7, content, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(1)
        elif kind == "p":
            pdf.set_font("Helvetica", size=10)
            pdf.multi_cell(0, 5, content, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(2)
        elif kind == "li":
            pdf.set_font("Helvetica", size=10)
            pdf.set_x(pdf.l_margin + 4)
            pdf.multi_cell(pdf.epw - 4, 5, "- " + content, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(1)
        elif kind == "table":
            pdf.set_font("Helvetica", size=9)
            widths = COL_WIDTHS.get(tuple(content[0]))
            with pdf.table(line_height=5, text_align="LEFT", col_widths=widths) as table:
                for row_cells in content:
                    row = table.row()
                    for cell in row_cells:
                        row.cell(cell)
            pdf.ln(3)
        else:
            raise ValueError(f"unknown block kind {kind!r}")

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{report['stem']}.pdf"
    pdf.output(str(path))
    return path


def main(argv: list[str]) -> int:
    out_dir = Path(argv[1]) if len(argv) > 1 else DEFAULT_OUT
    for report in REPORTS:
        path = render(report, out_dir)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
