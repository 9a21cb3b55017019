<?xml version="1.0" encoding="UTF-8"?>
<!-- The billing system's invoice from an ERP order: the stylesheet its team already had. -->
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:output method="xml" indent="yes" encoding="UTF-8"/>
  <xsl:param name="issuer" select="'UNKNOWN'"/>

  <xsl:template match="/order">
    <invoice number="INV-{@id}" issuer="{$issuer}" date="{@date}">
      <buyer code="{customer/@code}"><xsl:value-of select="normalize-space(customer)"/></buyer>
      <xsl:apply-templates select="line"/>
      <pieces><xsl:value-of select="sum(line/@qty)"/></pieces>
    </invoice>
  </xsl:template>

  <xsl:template match="line">
    <item sku="{@sku}" quantity="{@qty}"><xsl:value-of select="."/></item>
  </xsl:template>
</xsl:stylesheet>
