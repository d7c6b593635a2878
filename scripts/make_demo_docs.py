#!/usr/bin/env python3
"""Generate the encoded and binary files of the built-in demo set (assets/demo/).

The plain UTF-8 documents and the Q&A JSONL are edited by hand. This script
writes the files whose bytes matter and cannot be edited comfortably:

  handover_cp1256.txt         shift handover, Egyptian Arabic, Windows-1256
  handover_utf16le_bom.txt    shift handover, Gulf + Levantine, UTF-16LE with BOM
  faq.csv                     Q&A as CSV, UTF-8 with BOM, CRLF, quoted fields
  nm450_hydraulic_filter_ar.docx   Arabic maintenance procedure (bidi + torque table),
                                   written with zipfile only
  safety_rules.pdf            English + Arabic safety rules, via LibreOffice headless
                              (skipped with a message when soffice is missing)

Run from the repository root:  python3 scripts/make_demo_docs.py
Only the standard library is used; the output is deterministic except the PDF
(LibreOffice stamps a creation date).
"""

import csv
import html
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "assets", "demo")

# ---------------------------------------------------------------------------
# Shift handovers
# ---------------------------------------------------------------------------

# Western digits only: Windows-1256 has no Arabic-Indic digits.
HANDOVER_A_TO_B = """\
تسليم وردية — خط 3 (صالة الحقن) وخط 1
من: محمود صابر (وردية A، 06:00–14:00)
إلى: خالد العتيبي (وردية B، 14:00–22:00)
التاريخ: 2026/11/28

- المكنة NM-450 رقم 2 طلّعت إنذار E-17 الساعة 9:30 الصبح. الفيشة كانت سليمة، فغيّرنا الثرموكبل TC-K-150 وربطناه على 8 Nm، والمكنة رجعت تشتغل الساعة 10:15. سحبنا شوط كامل واتفحص، كله تمام.
- المكنة NM-450 رقم 1 شغالة طبيعي من أول الوردية، مفيش إنذارات.
- الشيلر CH-40 كان بيسخن شوية: المية كانت طالعة 15 درجة بدل 12. نضّفنا المصفاة (strainer) والحرارة رجعت 12 الساعة 12 الضهر. خلّي عينك عليه.
- البالتايزر PZ-3 وقف مرتين بإنذار P-07. فني الكهربا بص على الحساس S7 وقال هيرجع يغيّره بكرة.
- خط 1 شغال على 12,000 إزازة في الساعة.
- متنساش: الفيلر FL-12 لازم يتعمله CIP قبل الساعة 10 بالليل، آخر CIP كان امبارح الساعة 10 بالليل.
- صرفنا ثرموكبل واحد TC-K-150 من المخزن، فاضل 3.

ملاحظة فني المورّد (يوسف، شركة الصيانة) على BM-6:
"الماكينة BM-6 راه خاصها تبدال ديال الجوانات ديال الستريتش، درت ليها غير إصلاح مؤقت. غادي نرجع نهار الاثنين إن شاء الله."
"""

HANDOVER_B_TO_C = """\
تسليم وردية — خط 3 وخط 1
من: خالد العتيبي (وردية B، 14:00–22:00)
إلى: رامي حداد (وردية C، 22:00–06:00)
التاريخ: 2026/11/28

- الحين المكينتين NM-450 رقم 1 ورقم 2 شغالات زين.
- المكينة رقم 1 طلع فيها إنذار E-22 مرتين، حرارة زيت الهيدروليك وصلت 55 °C. شيكنا على الشيلر CH-40 ولقينا المصفاة مسدودة مرة ثانية، نظفناها ونزلت حرارة الزيت إلى 47 °C.
- ترى ما فيه في المخزن من عناصر فلتر HF-220 إلا واحد بس. رفعنا طلب شراء، ولا أحد يستخدم الأخير إلا إذا طلع E-63.
- سوّينا CIP للفيلر FL-12 الساعة 21:00، كل شي تمام.
- البالتايزر PZ-3: فني الكهرباء بيجي باكر الصبح عشان حساس S7.
- الكمبروسر AC-75 ضغطه 7.4 بار، طبيعي. الشغل اليوم كان وايد بس الحمد لله ما صار شي.

رد الاستلام — رامي حداد:
تمام، استلمت الوردية. رح شيّك على مصفاة الشيلر كل ساعتين لحتى نعرف شو القصة، وإذا رجع E-22 بحكي مع م. هاني فتحي الصبح. إذا بدكن شي من المخزن اكتبولي ياه هون.
"""


def write_handovers():
    # Windows line endings: these notes are typed in Notepad on the office PC.
    a = HANDOVER_A_TO_B.replace("\n", "\r\n")
    with open(os.path.join(DEMO, "handover_cp1256.txt"), "wb") as f:
        f.write(a.encode("cp1256"))
    b = HANDOVER_B_TO_C.replace("\n", "\r\n")
    with open(os.path.join(DEMO, "handover_utf16le_bom.txt"), "wb") as f:
        f.write(b"\xff\xfe" + b.encode("utf-16-le"))


# ---------------------------------------------------------------------------
# FAQ CSV
# ---------------------------------------------------------------------------

FAQ = [
    ("What should I do when E-63 appears on the NM-450?",
     "Stop the machine, lock out, and wait until the oil is below 40 °C. Replace filter element HF-220 "
     "and O-ring OR-95.\nTighten the cover bolts to 45 Nm in a cross pattern, then run the pump "
     "5 minutes and check for leaks."),
    ("What PPE is required in the moulding hall?",
     "S3 safety shoes, safety glasses, and hearing protection (noise is above 85 dB)."),
    ("What torque for the mould clamp bolts?", "210 Nm on the M16 bolts, with a calibrated torque wrench."),
    ("متى يُغيَّر زيت الهيدروليك في NM-450؟", "كل 4000 ساعة تشغيل، بزيت ISO VG 46، وسعة الخزان 380 لترًا."),
    ("What is the CH-40 chiller set point?", "12 °C."),
    ("Which production lines does Plant 2 have?",
     "Line 1, bottling: BM-6, FL-12, CP-12, ST-80, PZ-3. Line 3, moulding: NM-450 no. 1 and no. 2."),
    ("Who supervises shift B?", "Khaled Al-Otaibi, 14:00–22:00."),
    ("إيه أول ماكينة نشغّلها في خط 1؟", "الكمبروسر AC-75، ونستنى لحد ما الضغط يوصل 7.5 بار."),
    ("What blow pressure does BM-6 use?", "32 bar. Alarm B-11 comes below 30 bar."),
    ("A CAP-28 cap weighs less than 2.8 g. What do I do?",
     "Stop production and tell the shift supervisor.\nPut yellow HOLD labels on the pallets made since the "
     "last good check.\nCheck the nozzle temperature (225 °C) and alarm E-08."),
    ("كم سرعة الرافعة الشوكية المسموح بها؟", "8 كم/ساعة داخل الصالات."),
    ("How often is the FL-12 filler cleaned?", "CIP cleaning every 24 hours."),
    ("What does alarm B-11 mean?", "BM-6 high-pressure air is below 30 bar. Check the HP compressor and the air dryer."),
    ("Where do I lock out an NM-450?",
     "At lockout station LS-2 in the moulding hall, or at the machine's main switch, with your own red padlock "
     "and a signed tag."),
    ("E-45 بتطلع كل ما نشغّل الصبح، ليه؟",
     "ده حمل زائد على موتور البريمة من التشغيل على البارد. استنى 30 دقيقة بعد ما السلندر يوصل للحرارة المضبوطة."),
    ("What is the emergency number, and where do we gather?", "Call 222, then go to assembly point B, next to gate 4."),
]


def write_faq():
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    w.writerow(["question", "answer"])
    for q, a in FAQ:
        w.writerow([q, a])
    with open(os.path.join(DEMO, "faq.csv"), "wb") as f:
        f.write(b"\xef\xbb\xbf" + buf.getvalue().encode("utf-8"))


# ---------------------------------------------------------------------------
# DOCX: Arabic maintenance procedure, right-to-left, with a torque table
# ---------------------------------------------------------------------------

W_NS = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"

CONTENT_TYPES = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">
<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>
<Default Extension="xml" ContentType="application/xml"/>
<Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/>
<Override PartName="/word/styles.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.styles+xml"/>
<Override PartName="/docProps/core.xml" ContentType="application/vnd.openxmlformats-package.core-properties+xml"/>
</Types>"""

ROOT_RELS = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">
<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="word/document.xml"/>
<Relationship Id="rId2" Type="http://schemas.openxmlformats.org/package/2006/relationships/metadata/core-properties" Target="docProps/core.xml"/>
</Relationships>"""

DOC_RELS = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">
<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/styles" Target="styles.xml"/>
</Relationships>"""

STYLES = f"""<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<w:styles xmlns:w="{W_NS}">
<w:docDefaults>
<w:rPrDefault><w:rPr><w:rFonts w:ascii="DejaVu Sans" w:hAnsi="DejaVu Sans" w:cs="Noto Naskh Arabic"/>
<w:sz w:val="22"/><w:szCs w:val="24"/><w:lang w:val="en-GB" w:bidi="ar-EG"/></w:rPr></w:rPrDefault>
<w:pPrDefault><w:pPr><w:spacing w:after="120"/></w:pPr></w:pPrDefault>
</w:docDefaults>
<w:style w:type="paragraph" w:default="1" w:styleId="Normal"><w:name w:val="Normal"/><w:pPr><w:bidi/></w:pPr></w:style>
<w:style w:type="paragraph" w:styleId="Title"><w:name w:val="Title"/><w:basedOn w:val="Normal"/>
<w:pPr><w:bidi/><w:spacing w:after="240"/></w:pPr><w:rPr><w:b/><w:bCs/><w:sz w:val="32"/><w:szCs w:val="36"/></w:rPr></w:style>
<w:style w:type="paragraph" w:styleId="Heading1"><w:name w:val="heading 1"/><w:basedOn w:val="Normal"/>
<w:pPr><w:keepNext/><w:bidi/><w:spacing w:before="240" w:after="120"/><w:outlineLvl w:val="0"/></w:pPr>
<w:rPr><w:b/><w:bCs/><w:sz w:val="26"/><w:szCs w:val="30"/></w:rPr></w:style>
<w:style w:type="table" w:styleId="TableGrid"><w:name w:val="Table Grid"/>
<w:tblPr><w:tblBorders>
<w:top w:val="single" w:sz="4" w:space="0" w:color="000000"/><w:left w:val="single" w:sz="4" w:space="0" w:color="000000"/>
<w:bottom w:val="single" w:sz="4" w:space="0" w:color="000000"/><w:right w:val="single" w:sz="4" w:space="0" w:color="000000"/>
<w:insideH w:val="single" w:sz="4" w:space="0" w:color="000000"/><w:insideV w:val="single" w:sz="4" w:space="0" w:color="000000"/>
</w:tblBorders></w:tblPr></w:style>
</w:styles>"""

CORE = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<cp:coreProperties xmlns:cp="http://schemas.openxmlformats.org/package/2006/metadata/core-properties"
 xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:dcterms="http://purl.org/dc/terms/"
 xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<dc:title>تغيير عنصر فلتر الزيت الهيدروليكي HF-220 — NM-450</dc:title>
<dc:creator>Nile Packaging &amp; Moulding Co. — Maintenance</dc:creator>
<dc:language>ar-EG</dc:language>
<dcterms:created xsi:type="dcterms:W3CDTF">2026-11-01T08:00:00Z</dcterms:created>
</cp:coreProperties>"""

# (style, text); style None = Normal, "list" = numbered step written inline.
PROCEDURE = [
    ("Title", "إجراء صيانة: تغيير عنصر فلتر الزيت الهيدروليكي HF-220 — ماكينة الحقن NM-450"),
    (None, "رقم الإجراء: MP-NM450-03 — شركة النيل للتعبئة والتغليف، مصنع 2، خط 3 (صالة الحقن)."),
    ("Heading1", "الغرض والتكرار"),
    (None, "يُغيَّر عنصر الفلتر HF-220 كل 1000 ساعة تشغيل، أو فور ظهور الإنذار E-63 (انسداد الفلتر: "
           "فرق الضغط أكثر من 3.5 بار)، أيهما أسبق."),
    (None, "زيت الهيدروليك المعتمد هو ISO VG 46، ويُغيَّر كل 4000 ساعة تشغيل، وسعة الخزان 380 لترًا."),
    ("Heading1", "الأدوات وقطع الغيار"),
    (None, "عنصر فلتر HF-220 جديد، وحلقة مانعة للتسريب (O-ring) رقم OR-95، ومفتاح عزم معايَر 20–250 Nm، "
           "ووعاء لتجميع الزيت، وقفازات مقاومة للزيت."),
    ("Heading1", "تحذيرات السلامة"),
    (None, "اعزل الماكينة بقفلك الأحمر الشخصي في محطة العزل LS-2 قبل البدء، ولا يرفع القفل إلا من وضعه."),
    (None, "الزيت الساخن يسبب حروقًا: لا تفتح مبيت الفلتر قبل أن تنخفض حرارة الزيت إلى أقل من 40 °C."),
    ("Heading1", "خطوات العمل"),
    (None, "1. أوقِف الماكينة والمضخة الهيدروليكية، ثم طبِّق العزل والإقفال (LOTO)."),
    (None, "2. انتظر حتى تقلَّ حرارة الزيت عن 40 °C، وتحقَّق منها على شاشة التحكم."),
    (None, "3. ضع وعاء التجميع تحت مبيت الفلتر، وفُكَّ مسامير الغطاء M10 بالتبادل."),
    (None, "4. أخرِج العنصر القديم HF-220 وافحصه: وجود برادة معدنية يعني تآكلًا في المضخة، فأبلِغ مدير الصيانة."),
    (None, "5. استبدِل الحلقة OR-95 في كل مرة ولا تُعِد استخدام القديمة، وادهن الجديدة بقليل من الزيت النظيف."),
    (None, "6. ركِّب العنصر الجديد، ثم اربط مسامير الغطاء بعزم 45 Nm بترتيب متقاطع."),
    (None, "7. ارفع العزل، وشغِّل المضخة 5 دقائق، وتأكَّد من عدم وجود أي تسريب."),
    (None, "8. أعِد ضبط الإنذار E-63، وسجِّل التغيير وقراءة عدّاد الساعات في سجل الصيانة."),
    ("Heading1", "جدول عزم الربط — ماكينة NM-450"),
]

TORQUE_TABLE = [
    ("الجزء", "المقاس", "عزم الربط"),
    ("مسامير غطاء مبيت الفلتر", "M10", "45 Nm"),
    ("مسامير تثبيت القالب", "M16", "210 Nm"),
    ("رأس الفوهة NT-28", "—", "95 Nm"),
    ("رأس البريمة (حلقة عدم الرجوع)", "—", "140 Nm"),
    ("الثرموكبل TC-K-150", "M6", "8 Nm"),
    ("مسامير أطواق السخانات", "M5", "6 Nm"),
]

AFTER_TABLE = [
    (None, "ملاحظة: استخدم مفتاح عزم معايَرًا دائمًا، ولا تستخدم مفتاح الصدم (impact) على مسامير القالب."),
    (None, "اعتمده: م. هاني فتحي، مدير الصيانة."),
]

# Latin/number stretches get their own left-to-right runs so that Word and
# LibreOffice order them correctly inside the right-to-left paragraph.
ARABIC = re.compile("[\u0600-\u06ff]")
LATIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9.,:/°±–\- ]*[A-Za-z0-9°]|[A-Za-z0-9]")


def runs(text, bold=False):
    out, pos = [], 0
    for m in LATIN.finditer(text):
        if m.start() > pos:
            out.append((text[pos:m.start()], True))
        out.append((m.group(0), False))
        pos = m.end()
    if pos < len(text):
        out.append((text[pos:], True))
    xml = []
    for chunk, rtl in out:
        props = ("<w:b/><w:bCs/>" if bold else "") + ("<w:rtl/>" if rtl else "")
        rpr = f"<w:rPr>{props}</w:rPr>" if props else ""
        xml.append(f'<w:r>{rpr}<w:t xml:space="preserve">{html.escape(chunk, quote=False)}</w:t></w:r>')
    return "".join(xml)


def para(text, style=None, bold=False):
    pstyle = f'<w:pStyle w:val="{style}"/>' if style else ""
    # A cell holding only "45 Nm" is a left-to-right paragraph; in a bidi one it would read "Nm 45".
    direction = "<w:bidi/>" if ARABIC.search(text) else '<w:bidi w:val="0"/>'
    return f"<w:p><w:pPr>{pstyle}{direction}</w:pPr>{runs(text, bold)}</w:p>"


def table(rows):
    widths = (4200, 1400, 1800)
    grid = "".join(f'<w:gridCol w:w="{w}"/>' for w in widths)
    body = []
    for i, row in enumerate(rows):
        cells = []
        for w, text in zip(widths, row):
            cells.append(f'<w:tc><w:tcPr><w:tcW w:w="{w}" w:type="dxa"/></w:tcPr>{para(text, bold=(i == 0))}</w:tc>')
        header = "<w:trPr><w:tblHeader/></w:trPr>" if i == 0 else ""
        body.append(f"<w:tr>{header}{''.join(cells)}</w:tr>")
    return (f'<w:tbl><w:tblPr><w:tblStyle w:val="TableGrid"/><w:bidiVisual/><w:tblW w:w="7400" w:type="dxa"/>'
            f'</w:tblPr><w:tblGrid>{grid}</w:tblGrid>{"".join(body)}</w:tbl>')


def document_xml():
    parts = [para(t, s) for s, t in PROCEDURE]
    parts.append(table(TORQUE_TABLE))
    parts += [para(t, s) for s, t in AFTER_TABLE]
    sect = ('<w:sectPr><w:pgSz w:w="11906" w:h="16838"/>'
            '<w:pgMar w:top="1134" w:right="1134" w:bottom="1134" w:left="1134" w:header="567" w:footer="567" w:gutter="0"/>'
            '<w:bidi/></w:sectPr>')
    return (f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
            f'<w:document xmlns:w="{W_NS}"><w:body>{"".join(parts)}{sect}</w:body></w:document>')


def write_zip(path, members):
    # Fixed timestamps keep the DOCX byte-identical between runs.
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(2026, 11, 1, 8, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data.encode("utf-8"))


def write_docx():
    write_zip(os.path.join(DEMO, "nm450_hydraulic_filter_ar.docx"), [
        ("[Content_Types].xml", CONTENT_TYPES),
        ("_rels/.rels", ROOT_RELS),
        ("word/document.xml", document_xml()),
        ("word/_rels/document.xml.rels", DOC_RELS),
        ("word/styles.xml", STYLES),
        ("docProps/core.xml", CORE),
    ])


# ---------------------------------------------------------------------------
# PDF: safety rules, English with an Arabic summary, through LibreOffice
# ---------------------------------------------------------------------------

SAFETY_EN = [
    ("h1", "Plant 2 Safety Rules"),
    ("p", "Nile Packaging & Moulding Co., Plant 2. Issued by the safety officer, Eng. Mona Farouk "
          "(extension 250). Every employee, contractor and visitor follows these rules. Breaking a rule "
          "marked (!) means removal from the plant floor."),
    ("h2", "1. Personal protective equipment"),
    ("li", "Minimum PPE on the production floor: S3 safety shoes and safety glasses."),
    ("li", "Hearing protection wherever the noise is above 85 dB. This includes the whole moulding hall."),
    ("li", "Heat-resistant gloves near the NM-450 barrel and nozzle: the surfaces reach 230 °C."),
    ("li", "Face shield and chemical gloves when handling the caustic used for FL-12 CIP cleaning."),
    ("h2", "2. Lockout / tagout (!)"),
    ("li", "Before any work inside a machine guard, isolate every energy source and lock it with your own "
           "red padlock and a signed tag, at lockout station LS-2 or at the machine's main switch."),
    ("li", "Only the person who fitted a padlock may remove it."),
    ("li", "Never bypass a safety gate switch, such as SG-1 on the NM-450 (alarm E-31)."),
    ("h2", "3. Lifting"),
    ("li", "Mould M-2832 weighs 1.8 tonnes. Lift it only with the 5-tonne overhead crane, with two people: "
           "one operates the crane, one guides the load."),
    ("li", "Nobody stands under a suspended load."),
    ("h2", "4. Forklifts"),
    ("li", "Speed limit inside the halls: 8 km/h. Sound the horn at every crossing."),
    ("li", "Pedestrians walk only in the green lanes."),
    ("h2", "5. Fire and emergencies"),
    ("li", "Use CO2 extinguishers on electrical panels; water or foam on pallets and film. "
           "Extinguishers are checked monthly."),
    ("li", "Emergency number: 222 from any plant phone."),
    ("li", "When the alarm sounds, leave by the nearest exit and go to assembly point B, next to gate 4. "
           "Report to your shift supervisor and wait there until the safety officer allows you back."),
]

SAFETY_AR = [
    ("h2", "ملخص قواعد السلامة بالعربية"),
    ("li", "معدات الوقاية: حذاء السلامة S3 ونظارة الوقاية إلزاميان في صالات الإنتاج، وواقي الأذن حيث يزيد "
           "الضجيج على 85 dB، ومنها صالة الحقن كاملة."),
    ("li", "العزل والإقفال: قبل أي عمل داخل حماية الماكينة اعزل مصادر الطاقة وأقفلها بقفلك الأحمر الشخصي. "
           "لا يرفع القفل إلا من وضعه، ويمنع تجاوز مفتاح باب الأمان."),
    ("li", "الرفع: وزن القالب M-2832 هو 1.8 طن، ولا يرفع إلا بالونش العلوي (حمولته 5 طن) وبوجود شخصين."),
    ("li", "الرافعات الشوكية: السرعة القصوى 8 كم/ساعة داخل الصالات."),
    ("li", "الطوارئ: اتصل بالرقم 222 من أي هاتف داخلي، وتوجه إلى نقطة التجمع B بجوار البوابة 4."),
    ("li", "مسؤولة السلامة: م. منى فاروق (تحويلة 250)."),
]


def safety_html():
    def render(items, rtl):
        out, in_list = [], False
        for kind, text in items:
            t = html.escape(text)
            if kind == "li" and not in_list:
                out.append("<ul>")
                in_list = True
            if kind != "li" and in_list:
                out.append("</ul>")
                in_list = False
            out.append(f"<{kind}>{t}</{kind}>")
        if in_list:
            out.append("</ul>")
        body = "\n".join(out)
        if rtl:
            return f'<div dir="rtl" lang="ar" style="font-family: \'Noto Naskh Arabic\'; text-align: right">\n{body}\n</div>'
        return f'<div lang="en-GB">\n{body}\n</div>'

    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Plant 2 Safety Rules</title>"
            "<style>body { font-family: 'DejaVu Sans'; font-size: 11pt }</style></head><body>\n"
            + render(SAFETY_EN, False) + "\n" + render(SAFETY_AR, True) + "\n</body></html>\n")


def write_pdf():
    soffice = shutil.which("soffice") or shutil.which("libreoffice")
    if not soffice:
        print("soffice not found: safety_rules.pdf left as it is", file=sys.stderr)
        return
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "safety_rules.html")
        with open(src, "w", encoding="utf-8") as f:
            f.write(safety_html())
        profile = "file://" + os.path.join(tmp, "profile")
        subprocess.run([soffice, f"-env:UserInstallation={profile}", "--headless",
                        "--infilter=HTML (StarWriter)", "--convert-to", "pdf:writer_pdf_Export",
                        "--outdir", tmp, src], check=True, stdout=subprocess.DEVNULL)
        shutil.copyfile(os.path.join(tmp, "safety_rules.pdf"), os.path.join(DEMO, "safety_rules.pdf"))


def main():
    os.makedirs(DEMO, exist_ok=True)
    write_handovers()
    write_faq()
    write_docx()
    write_pdf()
    for name in sorted(os.listdir(DEMO)):
        print(f"{os.path.getsize(os.path.join(DEMO, name)):7d}  {name}")


if __name__ == "__main__":
    main()
